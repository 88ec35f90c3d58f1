// The whole system on a cluster of real nodes (test/controlplane/cluster.ts), as an operator
// installs it: the project's images (built from the Dockerfile) in every node's containerd, the
// chart installed with the real helm, its key Job making the keys and TLS (the node-runner runs
// as its DaemonSet, unchanged: in-cluster configuration through the `kubernetes` Service; each
// node's kubelet has a cgroup root of its own, `/<node name>`, which the chart's
// `nodeRunner.cgroupRoot=/$(NODE_NAME)` names), the function and Knative's ApiServerSource
// adapter either as processes in the cluster's network or, with the `knative` option, run by
// Knative Eventing's and Serving's own controllers (test/support/knative.ts), the function
// sending to each pod's hostIP, and Istio's own istiod (test/support/istiod.ts), whose webhook
// injects mesh pods as they are created.
//
// Istio's proxyv2 image cannot be pulled here: the istio-proxy container runs a recorder under
// its name (test/node/proxy-recorder.mjs) that answers on Envoy's ports with the port the
// connection arrived on.
import { NODE_RUNNER_DAEMONSET } from "../../node-runner/kube.ts";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { BIN, missingBinariesReason, waitFor, type Adapter, type ControlPlane } from "../controlplane/harness.ts";
import { startCluster, type Cluster } from "../controlplane/cluster.ts";
import type { IpFamily } from "../controlplane/network.ts";
import { IMAGE_DIR, missingNodeReason, type RealNode } from "../controlplane/node.ts";
import { FUNCTION_AUDIENCE, startFunction, type Component } from "./components.ts";
import { assertAvailable } from "./environment.ts";
import { peakRssMiB, pidsWhere } from "./processes.ts";
import { installIstiod, ISTIO_PROXY_IMAGE, missingIstiodReason } from "./istiod.ts";
import { installKnative, knativeReady, patchConfigMap } from "./knative.ts";

const root = path.resolve(import.meta.dirname, "../..");
const PROJECT_IMAGES = ["node-runner", "waiter", "proxy-recorder"];
/** An image with Node for the apps of test pods (the recorder's: the local base plus one file). */
export const APP_IMAGE = "localhost/pnc/proxy-recorder:test";
/**
 * The function's image under a name Knative Serving resolves no tag of (dev.local is one of its
 * default registries-skipping-tag-resolving: there is no registry here to ask for a digest).
 */
/** The function's image as the chart's values name it: Serving resolves no tag under dev.local. */
const DECISION_IMAGE = { repository: "dev.local/podnet/decision", tag: "test" };
export const RUNNER_LABEL = "app.kubernetes.io/name=podnet-node-runner";

/** PID 1 of a container ignores SIGTERM unless it handles it (else the kubelet waits 30 s). */
const EXIT_ON_SIGTERM = `process.on("SIGTERM", () => process.exit(0));`;
/** A TCP server on :8080 that answers "app". */
export const SERVER = `${EXIT_ON_SIGTERM} require("net").createServer((s) => { s.on("error", () => {}); s.once("data", () => s.end("app\\n")); }).listen(8080, "::")`;
/** Every 100 ms: connect to $TARGET:8080, say where it meant to go, print the answer. */
export const CLIENT = `${EXIT_ON_SIGTERM} const net = require("net"); setInterval(() => { const s = net.connect(8080, process.env.TARGET); s.on("error", (e) => console.log("error " + e.code)); s.on("data", (d) => console.log("answer " + d.toString().trim())); s.write(process.env.TARGET + ":8080\\n"); }, 100);`;

/** undefined when the real-node stack can start here; otherwise why not. */
export function missingRealNodeReason(): string | undefined {
  return (
    missingBinariesReason() ??
    missingNodeReason() ??
    missingIstiodReason() ??
    (PROJECT_IMAGES.every((i) => existsSync(path.join(IMAGE_DIR, `${i}.oci.tar`)))
      ? undefined
      : "the project's images are not built: run test/controlplane/images.sh")
  );
}

export interface PodRef {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}
export const podRef = (p: k8s.V1Pod): PodRef => ({ namespace: p.metadata?.namespace ?? "", name: p.metadata?.name ?? "", uid: p.metadata?.uid ?? "" });

export interface RealNodeStack {
  readonly cluster: Cluster;
  readonly cp: ControlPlane;
  /** The namespace the chart is installed in (the node-runners, the function, the sources). */
  readonly installNamespace: string;
  readonly nodes: readonly RealNode[];
  /** The node a pod is bound to. */
  readonly nodeOf: (pod: k8s.V1Pod) => RealNode;
  readonly core: k8s.CoreV1Api;
  /** The function and the adapter as processes, with where their logs are written as they run (not with Knative: there they are pods). */
  readonly processes?: { readonly fn: Component; readonly fnLogFile: string; readonly adapterLogFile: string };
  /** An app pod that istiod's webhook injects when it is created (label sidecar.istio.io/inject; native sidecar unless asked). */
  readonly meshPod: (name: string, app: k8s.V1Container, options?: { native?: boolean; annotations?: Record<string, string> }) => k8s.V1Pod;
  readonly appContainer: (role: "server" | "client", target?: string) => k8s.V1Container;
  /** Creates the Deployment `web` (label app=web) of server pods, a plain workload as a user writes it; on one node if given. */
  readonly createWebDeployment: (namespace: string, replicas: number, node?: RealNode) => Promise<void>;
  /** Creates a namespace with these labels (e.g. istio-injection=enabled); resolves once istiod has published its root certificate in it. */
  readonly createNamespace: (name: string, labels?: Record<string, string>) => Promise<void>;
  /** Resolves when the pod is Running with every container ready. */
  readonly waitRunning: (namespace: string, name: string, timeoutMs?: number) => Promise<k8s.V1Pod>;
  /** The node-runner pods' combined log tail. */
  readonly runnerLog: (lines?: number) => Promise<string>;
  /** Peak RSS (MiB) of the node-runner's and the function's processes so far. */
  readonly peakRssMiB: () => { nodeRunner: number; fn: number };
  readonly stop: () => Promise<void>;
}

export async function startRealNodeStack(
  options: {
    log?: (line: string) => void;
    namespaces?: string[];
    functionEnv?: NodeJS.ProcessEnv;
    /** Run the compiled function (dist/) with these V8 flags, as its image does (benchmarks). */
    compiledFunction?: { nodeArgs: readonly string[] };
    /** Nodes in the cluster (default 2). */
    nodes?: number;
    /** The cluster's IP families (default IPv4). */
    family?: IpFamily;
    /**
     * Knative Eventing and Serving run the function and the event sources (test/support/knative.ts),
     * with the chart's delivery variant, the chart installed in `namespace` (default
     * podnet-system); otherwise they are processes in the fabric, the chart in podnet-system.
     */
    knative?: { delivery: "direct" | "broker"; namespace?: string };
  } = {},
): Promise<RealNodeStack> {
  const log = options.log ?? ((): void => undefined);
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-realnode-"));
  let cluster: Cluster | undefined;
  let fn: Component | undefined;
  let adapter: Adapter | undefined;
  const stop = async (): Promise<void> => {
    await adapter?.stop();
    await fn?.stop();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    cluster = await startCluster({ nodes: options.nodes ?? 2, ...(options.family === undefined ? {} : { family: options.family }), log });
    const cp = cluster.cp;
    const nodes = cluster.nodes;
    const network = cluster.network;
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    const knative = options.knative;
    const installNamespace = knative?.namespace ?? "podnet-system";
    if (knative === undefined) await cp.installCrds();
    else {
      await installKnative(cp, nodes, { broker: knative.delivery === "broker", log });
      // The chart's monitoring objects need prometheus-operator's (Knative's come with Knative).
      await cp.installCrds("monitoring");
    }

    const appContainer = (role: "server" | "client", target?: string): k8s.V1Container => ({
      name: "app",
      image: APP_IMAGE,
      imagePullPolicy: "Never",
      command: ["node", "-e", role === "server" ? SERVER : CLIENT],
      ...(target === undefined ? {} : { env: [{ name: "TARGET", value: target }] }),
      securityContext: { runAsUser: 1000, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
    });
    const meshPod = (name: string, app: k8s.V1Container, o: { native?: boolean; annotations?: Record<string, string> } = {}): k8s.V1Pod => ({
      metadata: {
        name,
        labels: { "sidecar.istio.io/inject": "true" },
        annotations: { "sidecar.istio.io/nativeSidecar": String(o.native ?? true), ...o.annotations },
      },
      spec: { automountServiceAccountToken: false, containers: [app] },
    });

    // Images under the names the manifests and Istio's injector use.
    for (const [archive, local, name] of [
      ["node-runner", "localhost/podnet/node-runner:test", "ghcr.io/podnet/node-runner:0.1.0"],
      ["waiter", "localhost/podnet/waiter:test", "ghcr.io/podnet/waiter:0.1.0"],
      ["proxy-recorder", APP_IMAGE, ISTIO_PROXY_IMAGE],
      ...(knative === undefined ? [] : ([["decision", "localhost/podnet/decision:test", `${DECISION_IMAGE.repository}:${DECISION_IMAGE.tag}`]] as const)),
    ] as const) {
      for (const node of nodes) {
        node.importImage(path.join(IMAGE_DIR, `${archive}.oci.tar`));
        node.ctr("images", "tag", "--force", local, name);
      }
    }

    // The namespace first, labelled as README's Install says (the chart does not own it).
    await core.createNamespace({
      body: { metadata: { name: installNamespace, labels: { "pod-security.kubernetes.io/enforce": "privileged", "istio-injection": "disabled" } } },
    });
    // README's step 2: Knative Eventing's OIDC sender identity.
    if (knative !== undefined) await patchConfigMap(cp, "knative-eventing", "config-features", { "authentication-oidc": "enabled" });
    // The chart, installed by helm as an operator does (README, Install): the keys made in the
    // cluster by the chart's Job (`pnc keys ensure` in the node-runner image, on a node, as its
    // ServiceAccount), each node's kubelet cgroup root through the value.
    execFileSync(
      BIN.helm,
      [
        "install",
        "podnet",
        path.join(root, "charts/podnet"),
        "--namespace",
        installNamespace,
        "--kubeconfig",
        cp.writeKubeconfig("helm", cp.adminToken),
        "--set",
        "nodeRunner.cgroupRoot=/$(NODE_NAME)",
        // README, Monitoring: PodMonitors, the alerting rules and the dashboard.
        "--set",
        "monitoring.podMonitors.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.dashboard.enabled=true",
        ...(knative === undefined
          ? []
          : [
              "--set",
              `images.decision.repository=${DECISION_IMAGE.repository}`,
              "--set",
              `images.decision.tag=${DECISION_IMAGE.tag}`,
              "--set",
              `eventing.delivery=${knative.delivery}`,
            ]),
      ],
      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );
    await waitFor("a node-runner pod Ready on every node", 90_000, async () => {
      const pods = await core.listNamespacedPod({ namespace: installNamespace, labelSelector: RUNNER_LABEL });
      const ready = pods.items.filter((p) => p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"));
      return nodes.every((n) => ready.some((p) => p.spec?.nodeName === n.name));
    });
    log(`node-runner DaemonSet pods Ready on ${nodes.length} node(s)`);
    // Istio, README's step 5.
    await installIstiod(cp, nodes, log);

    /** The function, with the Secret's key and the CA ConfigMap's certificate, sending to each pod's hostIP, and Knative's adapter, as processes in the fabric. */
    async function startProcesses(): Promise<NonNullable<RealNodeStack["processes"]>> {
      const signingDir = path.join(dir, "signing");
      mkdirSync(signingDir);
      const secret = await core.readNamespacedSecret({ namespace: installNamespace, name: "podnet-signing-keys" });
      for (const [file, pem] of Object.entries(secret.data ?? {})) writeFileSync(path.join(signingDir, file), Buffer.from(pem, "base64"), { mode: 0o600 });
      const caConfigMap = await core.readNamespacedConfigMap({ namespace: installNamespace, name: "podnet-node-runner-ca" });
      writeFileSync(path.join(dir, "node-runner-ca.crt"), caConfigMap.data?.["ca.crt"] ?? "");
      const fnLogFile = path.join(dir, "function.log");
      fn = await startFunction(cp, {
        signingKeysDir: signingDir,
        nodeRunnerPort: 19443,
        nodeRunnerCaFile: path.join(dir, "node-runner-ca.crt"),
        nodeRunnerAddress: null,
        netns: network.fabricNetns,
        logFile: fnLogFile,
        ...(options.functionEnv === undefined ? {} : { env: options.functionEnv }),
        ...(options.compiledFunction === undefined ? {} : { compiled: options.compiledFunction }),
      });
      adapter = await cp.startAdapter({ sink: `${fn.inClusterUrl}/`, labelSelector: "security.istio.io/tlsMode=istio", audience: FUNCTION_AUDIENCE });
      return { fn, fnLogFile, adapterLogFile: adapter.logFile };
    }
    const processes = knative === undefined ? await startProcesses() : undefined;
    if (knative !== undefined) await knativeReady(cp, knative.delivery, installNamespace, log);

    const createNamespace = async (name: string, labels: Record<string, string> = {}): Promise<void> => {
      await core.createNamespace({ body: { metadata: { name, labels } } });
      // Istio's template mounts istiod's root certificate, which istiod publishes in every namespace.
      await waitFor(`istiod's istio-ca-root-cert in ${name}`, 30_000, async () => {
        const found = await core.listNamespacedConfigMap({ namespace: name, fieldSelector: "metadata.name=istio-ca-root-cert" });
        return /BEGIN CERTIFICATE/.test(found.items[0]?.data?.["root-cert.pem"] ?? "");
      });
    };
    for (const ns of options.namespaces ?? []) await createNamespace(ns);
    const createWebDeployment = async (namespace: string, replicas: number, node?: RealNode): Promise<void> => {
      const labels = { app: "web" };
      const template: k8s.V1Pod = { metadata: { labels }, spec: { automountServiceAccountToken: false, containers: [appContainer("server")] } };
      await cp
        .kubeConfig()
        .makeApiClient(k8s.AppsV1Api)
        .createNamespacedDeployment({
          namespace,
          body: {
            metadata: { name: "web" },
            spec: { replicas, selector: { matchLabels: labels }, template: node === undefined ? template : onNode(node, template) },
          },
        });
    };

    let runnerPeak = 0;
    const nodeOf = (pod: k8s.V1Pod): RealNode => {
      const node = nodes.find((n) => n.name === pod.spec?.nodeName);
      if (node === undefined) throw new Error(`pod ${pod.metadata?.name ?? "?"} is on no node of the cluster (${pod.spec?.nodeName ?? "unscheduled"})`);
      return node;
    };
    return {
      cluster,
      cp,
      installNamespace,
      nodes,
      nodeOf,
      ...(processes === undefined ? {} : { processes }),
      core,
      meshPod,
      appContainer,
      createNamespace,
      createWebDeployment,
      waitRunning: async (namespace, name, timeoutMs = 60_000) => {
        let pod: k8s.V1Pod | undefined;
        await waitFor(
          `pod ${name} Running`,
          timeoutMs,
          async () => {
            pod = await core.readNamespacedPod({ namespace, name });
            return pod.status?.phase === "Running" && pod.status.containerStatuses?.every((c) => c.ready) === true;
          },
          undefined,
          () => JSON.stringify(pod?.status?.initContainerStatuses?.map((s) => [s.name, s.state]) ?? pod?.status),
        ).catch(async (err: unknown) => {
          // The kubelet's and scheduler's warnings say why a pod never started (its sandbox, its image, its volumes).
          const events = await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name},type=Warning` }).catch(() => undefined);
          const warnings = (events?.items ?? []).map((e) => `${e.reason ?? ""} (x${String(e.count ?? 1)}): ${e.message ?? ""}`);
          throw new Error(`${err instanceof Error ? err.message : String(err)}${warnings.length === 0 ? "" : `\nits warnings:\n${warnings.join("\n")}`}`);
        });
        return pod as k8s.V1Pod;
      },
      runnerLog: async (lines = 20) => {
        const pods = await core.listNamespacedPod({ namespace: installNamespace, labelSelector: RUNNER_LABEL });
        return pods.items.map((p) => nodeOf(p).containerLog(podRef(p), "node-runner").split("\n").slice(-lines).join("\n")).join("\n");
      },
      peakRssMiB: () => {
        for (const pid of pidsWhere((cmdline) => cmdline.includes("dist/node-runner/main.js"))) runnerPeak = Math.max(runnerPeak, peakRssMiB(pid) || 0);
        return { nodeRunner: runnerPeak, fn: fn === undefined ? 0 : peakRssMiB(fn.process.pid) };
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The pod, to be scheduled onto this node by the scheduler (its hostname label). */
export function onNode(node: { name: string } | undefined, pod: k8s.V1Pod): k8s.V1Pod {
  return { ...pod, spec: { ...(pod.spec as k8s.V1PodSpec), nodeSelector: { "kubernetes.io/hostname": node?.name ?? "" } } };
}

/** Whether the node-runners' DaemonSet has rolled its current template out to every node, each pod Ready. */
export async function runnersRolledOut(apps: k8s.AppsV1Api, namespace: string): Promise<boolean> {
  const ds = await apps.readNamespacedDaemonSet({ namespace, name: NODE_RUNNER_DAEMONSET });
  const st = ds.status;
  return (
    st !== undefined &&
    (st.observedGeneration ?? 0) >= (ds.metadata?.generation ?? 1) &&
    st.updatedNumberScheduled === st.desiredNumberScheduled &&
    st.numberReady === st.desiredNumberScheduled
  );
}

/**
 * Inside a describe: the stack started before its tests and stopped after them (with the
 * node-runners' log tail printed); the accessor fails a test when it could not start.
 */
export function realNodeStackFixture(missing: string | undefined, label: string, options: Parameters<typeof startRealNodeStack>[0] = {}): () => RealNodeStack {
  let stack: RealNodeStack | undefined;
  before(async () => {
    if (missing !== undefined) return;
    stack = await startRealNodeStack({
      ...options,
      log: (line) => {
        console.log(`${label}: ${line}`);
      },
    });
  });
  after(async () => {
    if (stack !== undefined) console.log(`node-runner log (tail):\n${await stack.runnerLog(10).catch(() => "")}`);
    await stack?.stop();
  });
  return () => {
    assertAvailable(missing);
    assert.ok(stack !== undefined, "the stack started");
    return stack;
  };
}

/** The kubelet's cgroup of the pod (cgroupfs driver: <node's root>/kubepods[/<qos>]/pod<uid>), in the pids hierarchy. */
export function podCgroup(p: k8s.V1Pod): string {
  const uid = p.metadata?.uid ?? "";
  const root = `/sys/fs/cgroup/pids/${p.spec?.nodeName ?? ""}`;
  const found = ["besteffort/", "burstable/", ""].map((qos) => `${root}/kubepods/${qos}pod${uid}`).find((d) => existsSync(d));
  if (found === undefined) throw new Error(`no kubelet cgroup for pod ${uid}`);
  return found;
}

/** The Istio rules in a running pod's netns as iptables-save lists them (IPv4), without counters. */
export function istioRulesOf(p: k8s.V1Pod): string[] {
  return execFileSync("nsenter", [`--net=/proc/${podPids(p)[0] ?? 0}/ns/net`, "iptables-save"], { encoding: "utf8" })
    .split("\n")
    .filter((line) => line.includes("ISTIO_"))
    .map((line) => line.replace(/ \[\d+:\d+\]$/, ""));
}

/** The processes of a running pod (every container's, the sandbox's included). */
export function podPids(p: k8s.V1Pod): number[] {
  const cgroup = podCgroup(p);
  return readdirSync(cgroup, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .flatMap((d) =>
      readFileSync(path.join(cgroup, d.name, "cgroup.procs"), "utf8")
        .split("\n")
        .filter((l) => l !== ""),
    )
    .map(Number);
}
