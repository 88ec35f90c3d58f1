// A Kubernetes cluster of N real nodes on this machine, as kind gives one without a container
// engine: the network of network.ts, the control plane (etcd, kube-apiserver) in its fabric,
// kube-controller-manager and kube-scheduler beside them, the nodes of node.ts, each with its
// kubelet, containerd and kube-proxy, and CoreDNS (coredns.yaml): ClusterIP Services and
// `*.svc.cluster.local` names work from every pod. The tests and `npm run cluster:up` start it.
//
// What the cluster changes on the host is recorded before it is changed and restored by stop()
// or, after a killed run, by the next start (reapStaleClusters): the machine-wide sysctls the
// kubelet sets, and the mount points of the nodes' private directories (node.ts). The
// host's own network namespace is never touched: `hostNetworkState` is what the tests compare.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { freePort, pidAlive, reapStaleRuns, startControlPlane, waitFor, type ControlPlane } from "./harness.ts";
import { createClusterNetwork, reapStaleNetworks, type ClusterNetwork, type IpFamily } from "./network.ts";
import { killRecordedGroups, LoggedProcesses } from "./logged-processes.ts";
import { IMAGE_DIR, NODE_BIN, NODE_PRIVATE_DIRS, reapStaleNodes, startNode, type RealNode } from "./node.ts";

const RUN_PREFIX = "pnc-cluster-";
/** Machine-wide sysctls the kubelet changes (restored on stop). The network ones are per namespace: the nodes' own. */
const SYSCTLS = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"];
/** The nodes' private directories need mount points on the host: made when missing, removed on stop. */
const FOREIGN_PATHS = NODE_PRIVATE_DIRS;

interface ClusterState {
  readonly sysctls: Record<string, string>;
  /** Of FOREIGN_PATHS, those that existed before the cluster started (left alone). */
  readonly preexisting: string[];
}

export interface Cluster {
  readonly cp: ControlPlane;
  readonly nodes: readonly RealNode[];
  readonly network: ClusterNetwork;
  readonly dir: string;
  stop(): Promise<void>;
}

const readSysctl = (key: string): string | undefined => {
  try {
    return readFileSync(path.join("/proc/sys", key), "utf8").trim();
  } catch {
    return undefined;
  }
};

/**
 * The host network namespace's addresses, links, routes and rule sets, as text: equal before a
 * cluster starts and after it stops (and the same while it runs: the cluster lives elsewhere).
 */
export function hostNetworkState(): string {
  const run = (command: string, args: string[]): string => {
    const r = spawnSync(command, args, { encoding: "utf8" });
    return `$ ${command} ${args.join(" ")}\n${r.stdout}`;
  };
  return [
    run("ip", ["-o", "addr"]),
    run("ip", ["-o", "link"]),
    run("ip", ["route", "show", "table", "all"]),
    run("ip", ["-6", "route", "show", "table", "all"]),
    run("nft", ["list", "ruleset"]),
    run("iptables-save", []),
    run("ip6tables-save", []),
  ]
    .join("\n")
    .replace(/^# (Generated|Completed) .*$/gm, "") // iptables-save's timestamps
    .replace(/\s+(valid_lft|preferred_lft) \S+/g, ""); // address lifetimes count down
}

/** Undo what a cluster run changed on the host (its state file says what was there before). */
function cleanUpCluster(dir: string): void {
  let state: ClusterState = { sysctls: {}, preexisting: FOREIGN_PATHS };
  try {
    state = JSON.parse(readFileSync(path.join(dir, "state.json"), "utf8")) as ClusterState;
  } catch {
    // killed before anything was changed
  }
  killRecordedGroups(dir);
  for (const [key, value] of Object.entries(state.sysctls)) {
    try {
      writeFileSync(path.join("/proc/sys", key), value);
    } catch {
      // a sysctl this kernel does not have
    }
  }
  for (const p of FOREIGN_PATHS) if (!state.preexisting.includes(p)) rmSync(p, { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
}

/** The processes whose clusters are running on this machine. */
function liveClusters(): number[] {
  return readdirSync(os.tmpdir())
    .map((entry) => new RegExp(`^${RUN_PREFIX}(\\d+)-`).exec(entry)?.[1])
    .filter((pid): pid is string => pid !== undefined)
    .map(Number)
    .filter((pid) => pidAlive(pid));
}

/** Remove whatever killed runs left: nodes, control planes, networks, the host changes. */
export function reapStaleClusters(): number {
  let reaped = reapStaleNodes() + reapStaleRuns();
  for (const entry of readdirSync(os.tmpdir())) {
    const match = new RegExp(`^${RUN_PREFIX}(\\d+)-`).exec(entry);
    if (match === null || pidAlive(Number(match[1]))) continue;
    cleanUpCluster(path.join(os.tmpdir(), entry));
    reaped++;
  }
  return reaped + reapStaleNetworks();
}

export async function startCluster(options: { nodes?: number; family?: IpFamily; log?: (line: string) => void } = {}): Promise<Cluster> {
  const log = options.log ?? ((): void => undefined);
  const count = options.nodes ?? 2;
  if (!Number.isInteger(count) || count < 1 || count > 8) throw new Error(`--nodes ${count}: between 1 and 8 nodes`);
  const family = options.family ?? "ipv4";
  if (!["ipv4", "dual", "ipv6"].includes(family)) throw new Error(`--family ${family}: ipv4, dual or ipv6`);
  reapStaleClusters();
  const running = liveClusters();
  if (running.length > 0)
    throw new Error(
      `a cluster of process ${running.join(", ")} is running on this machine (npm run cluster:up?): stop it first (kill -INT ${running.join(" ")})`,
    );
  const started = performance.now();
  const since = (): string => `${((performance.now() - started) / 1000).toFixed(1)} s`;

  const dir = mkdtempSync(path.join(os.tmpdir(), `${RUN_PREFIX}${process.pid}-`));
  const controllers = new LoggedProcesses(dir);
  const state: ClusterState = {
    sysctls: Object.fromEntries(
      SYSCTLS.flatMap((k) => {
        const v = readSysctl(k);
        return v === undefined ? [] : [[k, v]];
      }),
    ),
    preexisting: FOREIGN_PATHS.filter((p) => existsSync(p)),
  };
  writeFileSync(path.join(dir, "state.json"), JSON.stringify(state));
  for (const p of FOREIGN_PATHS) mkdirSync(p, { recursive: true });

  let network: ClusterNetwork | undefined;
  let cp: ControlPlane | undefined;
  const nodes: RealNode[] = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    for (const node of [...nodes].reverse()) await node.stop();
    await controllers.stop();
    await cp?.stop();
    network?.remove();
    cleanUpCluster(dir);
  };

  try {
    network = createClusterNetwork(count, family);
    log(`network (${network.family}): fabric ${network.fabricAddresses.join(" ")}, ${count} node namespace(s) (${since()})`);
    cp = await startControlPlane({
      network: { netns: network.fabricNetns, addresses: network.fabricAddresses, serviceCidrs: network.serviceCidrs, serviceIps: network.apiServiceIps },
    });
    log(`control plane ready: ${cp.server} from this machine, ${cp.clusterServer} in the cluster (${since()})`);

    // The controllers a cluster of nodes needs (DaemonSets, Deployments, Jobs, Endpoints and
    // EndpointSlices, ServiceAccounts and their token Secrets, kube-root-ca.crt, garbage collection, aggregated
    // ClusterRoles, which Knative's RBAC is made of; scheduling), in the fabric.
    const kubeconfig = cp.writeKubeconfig("cluster-admin", cp.adminToken, "cluster");
    const startController = async (name: string, command: string, args: string[]): Promise<void> => {
      controllers.start(name, command, [...args, "--secure-port", String(await freePort())], { netns: network?.fabricNetns ?? "" });
    };
    await startController("kube-controller-manager", NODE_BIN.controllerManager, [
      "--kubeconfig",
      kubeconfig,
      "--root-ca-file",
      cp.caFile,
      // The token controller fills kubernetes.io/service-account-token Secrets (the chart's
      // metrics scraper's), signed with the key the API server checks tokens with.
      "--service-account-private-key-file",
      path.join(cp.dir, "sa.key"),
      "--controllers",
      "serviceaccount,serviceaccount-token,root-ca-cert-publisher,daemonset,replicaset,deployment,job,endpoints-controller,endpointslice,endpointslicemirroring,namespace,garbagecollector,podgc,nodelifecycle,clusterrole-aggregation-controller",
      "--use-service-account-credentials=false",
      "--leader-elect=false",
      "--bind-address",
      "127.0.0.1",
      "--v",
      "1",
    ]);
    await startController("kube-scheduler", NODE_BIN.scheduler, [
      "--kubeconfig",
      kubeconfig,
      "--authentication-kubeconfig",
      kubeconfig,
      "--authorization-kubeconfig",
      kubeconfig,
      "--leader-elect=false",
      "--bind-address",
      "127.0.0.1",
      "--v",
      "1",
    ]);

    // The nodes, one after another (each imports images and waits for Ready).
    for (const nodeNetwork of network.nodes) {
      const node = await startNode(cp, {
        name: `pnc-node-${nodeNetwork.index}`,
        network: nodeNetwork,
        kubeconfig,
        clusterDns: network.dnsServiceIp,
        clusterPodCidrs: network.clusterPodCidrs,
        log,
      });
      node.importImage(path.join(IMAGE_DIR, "coredns.oci.tar"));
      nodes.push(node);
    }

    // DNS: CoreDNS as a Deployment behind the kube-dns Service, at the primary family's address
    // (and an address of each family on a dual-stack cluster).
    const dnsManifest = readFileSync(path.join(import.meta.dirname, "coredns.yaml"), "utf8").replace(
      "clusterIP: 10.96.0.10",
      `clusterIP: ${network.dnsServiceIp}\n  ipFamilyPolicy: ${network.family === "dual" ? "PreferDualStack" : "SingleStack"}`,
    );
    await cp.applyYaml(dnsManifest);
    const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
    await waitFor(
      "CoreDNS available",
      60_000,
      async () => ((await apps.readNamespacedDeployment({ namespace: "kube-system", name: "coredns" })).status?.availableReplicas ?? 0) >= 1,
    );
    // Available is the pod's readiness; each node's kube-proxy programs the Service's endpoint
    // after it (until then a query to the Service address is refused there, as a pod saw once).
    const dnsIp = network.dnsServiceIp;
    const resolvesFrom = (node: RealNode): boolean =>
      spawnSync(
        "ip",
        [
          "netns",
          "exec",
          node.netns,
          process.execPath,
          "-e",
          `const r = new (require("dns").promises.Resolver)({ timeout: 1000, tries: 1 }); r.setServers([${JSON.stringify(dnsIp)}]); const name = "kubernetes.default.svc.cluster.local"; Promise.any([r.resolve4(name), r.resolve6(name)]).then(() => process.exit(0), () => process.exit(1))`,
        ],
        { stdio: "ignore" },
      ).status === 0;
    await waitFor("the cluster's DNS answering from every node", 30_000, () => nodes.every(resolvesFrom));
    log(`cluster ready: ${nodes.length} node(s), DNS at ${network.dnsServiceIp} (${since()})`);
    return { cp, nodes, network, dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
