// A real Kubernetes node of the test cluster (cluster.ts), in a network namespace of its own
// (network.ts): containerd (Debian's) with runc and a private root, state and socket, the CNI
// bridge plugin, kubelet with a cgroup root of its own (`/<node name>`, so that several kubelets
// share this machine's cgroup hierarchies without touching each other's pods), and kube-proxy in
// nftables mode. Binaries come from test/controlplane/build.sh, images from images.sh.
//
// Every process runs in the node's network namespace (nsenter: the mount namespace stays the
// host's, so that the kubelet's volume mounts are the ones containerd sees). What a node makes
// outside its own directory — its cgroup trees and mounts — is undone by stop() or, after a
// killed run, by the next start (reapStaleNodes); what the whole cluster changes on the host
// (sysctls, paths the kubelet writes) is the cluster's (cluster.ts).
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, rmdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { pidsWhere } from "../support/processes.ts";
import { CACHE_DIR, pidAlive, waitFor, type ControlPlane } from "./harness.ts";
import { killRecordedGroups, LoggedProcesses, running, type LoggedProcess } from "./logged-processes.ts";
import { type NodeNetwork } from "./network.ts";

export const NODE_BIN = {
  kubelet: path.join(CACHE_DIR, "bin", "kubelet"),
  kubeProxy: path.join(CACHE_DIR, "bin", "kube-proxy"),
  controllerManager: path.join(CACHE_DIR, "bin", "kube-controller-manager"),
  scheduler: path.join(CACHE_DIR, "bin", "kube-scheduler"),
  cniDir: path.join(CACHE_DIR, "bin", "cni"),
};
export const IMAGE_DIR = path.join(CACHE_DIR, "images");
export const PAUSE_IMAGE = "localhost/pnc/pause:test";

/** The CNI plugins a node runs (build.sh builds them): its network's and containerd's loopback. */
const CNI_PLUGINS = ["bridge", "host-local", "loopback"];
const RUN_PREFIX = "pnc-node-";
/**
 * What a node keeps to itself, as a node's own filesystem would: in its mount namespace /run is
 * a tmpfs of its own (the node-runner's /run/podnet, the xtables lock, containerd's runtime
 * state), and these directories are its own directory's, bind-mounted. The host has them as
 * empty mount points at most (cluster.ts makes and removes those).
 */
export const NODE_PRIVATE_DIRS = ["/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", "/etc/cni", "/opt/cni"];
/** The pod bridge in each node's namespace; its address (the pod subnet's first) is the pods' gateway. */
const POD_BRIDGE = "pnc0";
const CGROUP_ROOT = "/sys/fs/cgroup";

/** undefined when a node can start here; otherwise why not. */
export function missingNodeReason(): string | undefined {
  if (process.getuid?.() !== 0) return "a real node needs root";
  const missing = [
    NODE_BIN.kubelet,
    NODE_BIN.kubeProxy,
    NODE_BIN.controllerManager,
    NODE_BIN.scheduler,
    ...CNI_PLUGINS.map((plugin) => path.join(NODE_BIN.cniDir, plugin)),
    path.join(IMAGE_DIR, "pause.oci.tar"),
    path.join(IMAGE_DIR, "coredns.oci.tar"),
  ].filter((p) => !existsSync(p));
  if (missing.length > 0)
    return `node binaries or images not built (${missing.map((p) => path.basename(p)).join(", ")}): run test/controlplane/build.sh and test/controlplane/images.sh`;
  for (const tool of ["containerd", "runc", "ctr", "nft"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) return `${tool} is not installed (apt-get install containerd runc nftables)`;
  }
  return undefined;
}

/** What a node run made outside its directory, written before it is made. */
interface NodeState {
  /** The node's cgroup root directory name (top level of every hierarchy). */
  readonly cgroupRoot: string;
}

export interface RealNode {
  readonly name: string;
  /** Its primary address, and all of them (one per family). */
  readonly ip: string;
  readonly ips: readonly string[];
  /** Its network namespace (under /run/netns). */
  readonly netns: string;
  /** Its pods' subnet of the primary family. */
  readonly podSubnet: string;
  /** The kubelet's --cgroup-root: `/<node name>`. */
  readonly cgroupRoot: string;
  readonly dir: string;
  readonly containerdSocket: string;
  /** kubelet's log file. */
  readonly kubeletLog: string;
  /** Import an OCI archive into the node's containerd (the kubelet's k8s.io namespace). */
  importImage(archive: string): void;
  /** Run `ctr` against the node's containerd. */
  ctr(...args: string[]): string;
  /** The entries of a directory as the node sees it (its own /run, ...); undefined when it does not exist. */
  listDir(dir: string): string[] | undefined;
  /** What a container wrote (stdout and stderr, every restart), from the kubelet's pod log files. */
  containerLog(pod: { namespace: string; name: string; uid: string }, container: string): string;
  /** The same, line by line with the runtime's timestamp (RFC 3339, nanoseconds). */
  containerLogLines(pod: { namespace: string; name: string; uid: string }, container: string): { time: string; text: string }[];
  stop(): Promise<void>;
}

function sh(command: string, args: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(command, args, { encoding: "utf8", ...(input === undefined ? {} : { input }) });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function must(command: string, args: string[]): string {
  const r = sh(command, args);
  if (r.code !== 0) throw new Error(`${command} ${args.join(" ")}: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout;
}

/** Remove what earlier node runs left behind when they were killed before stop(). */
export function reapStaleNodes(): number {
  let reaped = 0;
  for (const entry of readdirSync(os.tmpdir())) {
    const match = new RegExp(`^${RUN_PREFIX}(\\d+)-`).exec(entry);
    if (match === null || pidAlive(Number(match[1]))) continue;
    cleanUpNode(path.join(os.tmpdir(), entry));
    reaped++;
  }
  return reaped;
}

/** Undo everything a node run made (its state file names its cgroup root). */
function cleanUpNode(dir: string): void {
  let state: NodeState | undefined;
  try {
    state = JSON.parse(readFileSync(path.join(dir, "state.json"), "utf8")) as NodeState;
  } catch {
    // Killed before the state was written: nothing outside the directory was made yet.
  }
  killRecordedGroups(dir);
  // containerd's shims and the pods' processes are in no process group of ours.
  for (const pid of pidsWhere((cmdline) => cmdline.startsWith("/usr/bin/containerd-shim") && cmdline.includes(dir))) killPid(pid);
  if (state !== undefined) killCgroupTree(state.cgroupRoot);
  unmountUnder(dir);
  if (state !== undefined) removeCgroupTree(state.cgroupRoot);
  rmSync(dir, { recursive: true, force: true });
}

function killPid(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}

/** The root of every cgroup hierarchy mounted (v1 controllers and the v2 unified tree). */
function cgroupHierarchies(): string[] {
  const out: string[] = [];
  const visit = (base: string): void => {
    if (existsSync(path.join(base, "cgroup.procs"))) {
      out.push(base);
      return;
    }
    for (const entry of safeReaddir(base)) visit(path.join(base, entry));
  };
  visit(CGROUP_ROOT);
  return out;
}

/** Every cgroup hierarchy's directory of `name` (v1 controllers and the v2 unified tree), where it exists. */
function cgroupDirs(name: string): string[] {
  return cgroupHierarchies()
    .map((h) => path.join(h, name))
    .filter((d) => existsSync(d));
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name);
  } catch {
    return [];
  }
}

function killCgroupTree(name: string): void {
  const walk = (dir: string): void => {
    for (const child of safeReaddir(dir)) walk(path.join(dir, child));
    try {
      for (const pid of readFileSync(path.join(dir, "cgroup.procs"), "utf8")
        .split("\n")
        .filter((l) => l !== ""))
        killPid(Number(pid));
    } catch {
      // gone
    }
  };
  for (const dir of cgroupDirs(name)) walk(dir);
}

/** Depth-first: a cgroup directory is removed with rmdir once its children are. */
function removeCgroupTree(name: string): void {
  const remove = (dir: string): void => {
    for (const child of safeReaddir(dir)) remove(path.join(dir, child));
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        rmdirSync(dir);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
        // EBUSY while the last killed processes exit
        spawnSync("sleep", ["0.1"]);
      }
    }
  };
  for (const dir of cgroupDirs(name)) remove(dir);
}

/** Unmount every mount at or below `root`, deepest first (lazily: a busy mount goes when freed). */
function unmountUnder(root: string): void {
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .map((p) => p.replace(/\\040/g, " "))
    .filter((p) => p === root || p.startsWith(`${root}/`))
    .sort((a, b) => b.length - a.length);
  for (const mount of mounts) sh("umount", ["-l", mount]);
}

export interface NodeOptions {
  readonly name: string;
  readonly network: NodeNetwork;
  /** A kubeconfig for processes in the cluster network (the kubelet's and kube-proxy's identity). */
  readonly kubeconfig: string;
  /** The cluster DNS Service's address, for the pods' resolv.conf. */
  readonly clusterDns?: string;
  /** Every node's pods, per family (kube-proxy tells pod traffic from the rest by it). */
  readonly clusterPodCidrs: readonly string[];
  readonly log?: (line: string) => void;
}

export async function startNode(cp: ControlPlane, options: NodeOptions): Promise<RealNode> {
  const missing = missingNodeReason();
  if (missing !== undefined) throw new Error(missing);
  const log = options.log ?? ((): void => undefined);
  const { name, network } = options;
  const started = performance.now();

  const dir = mkdtempSync(path.join(os.tmpdir(), `${RUN_PREFIX}${process.pid}-`));
  const processes = new LoggedProcesses(dir);
  // The node's own tree, named after it: the chart's cgroupRoot `/$(NODE_NAME)` finds it (only
  // one cluster runs on a machine at a time: cluster.ts refuses a second).
  const cgroupRoot = name;
  const state: NodeState = { cgroupRoot };
  writeFileSync(path.join(dir, "state.json"), JSON.stringify(state));

  /** The node's mount namespace, once made: every later process runs in it. */
  let mountNamespace: string | undefined;
  /** A process of the node, in its network (and mount) namespace, in a process group of its own. */
  const start = (proc: string, command: string, args: string[]): LoggedProcess =>
    processes.start(proc, command, args, { netns: network.netns, ...(mountNamespace === undefined ? {} : { mountNamespace }) });
  const logText = (proc: string) => {
    try {
      return readFileSync(path.join(dir, `${proc}.log`), "utf8");
    } catch {
      return "(no log)";
    }
  };
  const logTail = (proc: string) => logText(proc).split("\n").slice(-25).join("\n");
  /** Wait for a probe while the node's process `proc` runs; its log tail tells why it failed. */
  const waitWhile = (what: string, timeoutMs: number, probe: () => Promise<boolean> | boolean, proc: LoggedProcess) =>
    waitFor(
      what,
      timeoutMs,
      probe,
      () => (running(proc) ? undefined : `${proc.name} exited; log:\n${logTail(proc.name)}`),
      () => `${proc.name} log:\n${logTail(proc.name)}`,
    );

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await processes.stop();
    cleanUpNode(dir);
  };

  try {
    // The node's mount namespace: a process that only holds it (mounts there never reach the host's).
    const holder = start("mounts", "unshare", ["--mount", "--propagation", "slave", "sleep", "infinity"]);
    const ownMounts = readlinkSync("/proc/self/ns/mnt");
    await waitWhile(
      "the node's mount namespace",
      10_000,
      () => holder.child.pid !== undefined && readlinkSync(`/proc/${holder.child.pid}/ns/mnt`) !== ownMounts,
      holder,
    );
    mountNamespace = `/proc/${holder.child.pid ?? 0}/ns/mnt`;
    const inMounts = (args: string[]): string => must("nsenter", [`--mount=${mountNamespace ?? ""}`, "--", ...args]);
    inMounts(["mount", "-t", "tmpfs", "-o", "mode=755", `${name}-run`, "/run"]);
    for (const target of NODE_PRIVATE_DIRS) {
      const own = path.join(dir, "private", target);
      mkdirSync(own, { recursive: true });
      inMounts(["mount", "--bind", own, target]);
    }

    // CNI: a bridge in the node's namespace, host-local addresses kept in the node's directory;
    // the bridge is the pods' gateway and the node routes between it and the fabric. Its
    // configuration and plugins are where a node has them, /etc/cni/net.d and /opt/cni/bin (the
    // node's own, NODE_PRIVATE_DIRS), where a CNI agent's DaemonSet (istio-cni's) adds its own.
    const cniConf = path.join(dir, "private", "etc", "cni", "net.d");
    const cniBin = path.join(dir, "private", "opt", "cni", "bin");
    mkdirSync(cniConf, { recursive: true });
    mkdirSync(cniBin, { recursive: true });
    for (const plugin of CNI_PLUGINS) copyFileSync(path.join(NODE_BIN.cniDir, plugin), path.join(cniBin, plugin));
    writeFileSync(
      path.join(cniConf, "10-pnc.conflist"),
      JSON.stringify({
        cniVersion: "1.0.0",
        name: "pnc",
        plugins: [
          {
            type: "bridge",
            bridge: POD_BRIDGE,
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: {
              type: "host-local",
              ranges: network.podSubnets.map((subnet, i) => [{ subnet, gateway: network.podGateways[i] }]),
              routes: network.defaultRoutes.map((dst) => ({ dst })),
              dataDir: path.join(dir, "cni", "ipam"),
            },
          },
        ],
      }),
    );

    // containerd, private root/state/socket; its netns mounts under its state directory.
    const socket = path.join(dir, "containerd", "containerd.sock");
    mkdirSync(path.dirname(socket), { recursive: true });
    const containerdConfig = path.join(dir, "containerd", "config.toml");
    writeFileSync(
      containerdConfig,
      [
        "version = 2",
        `root = ${JSON.stringify(path.join(dir, "containerd", "root"))}`,
        `state = ${JSON.stringify(path.join(dir, "containerd", "state"))}`,
        "[grpc]",
        `  address = ${JSON.stringify(socket)}`,
        "[ttrpc]",
        `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
        '[plugins."io.containerd.grpc.v1.cri"]',
        `  sandbox_image = ${JSON.stringify(PAUSE_IMAGE)}`,
        // This VM withholds CAP_SYS_RESOURCE: runc cannot lower oom_score_adj without it.
        "  restrict_oom_score_adj = true",
        "  netns_mounts_under_state_dir = true",
        '  [plugins."io.containerd.grpc.v1.cri".containerd]',
        '    snapshotter = "overlayfs"',
        '    default_runtime_name = "runc"',
        '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '      runtime_type = "io.containerd.runc.v2"',
        '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        "        SystemdCgroup = false",
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        '    bin_dir = "/opt/cni/bin"',
        '    conf_dir = "/etc/cni/net.d"',
        "",
      ].join("\n"),
    );
    const containerd = start("containerd", "containerd", ["--config", containerdConfig]);
    const ctr = (...args: string[]): string => must("ctr", ["--address", socket, "--namespace", "k8s.io", ...args]);
    await waitWhile("containerd", 30_000, () => existsSync(socket) && sh("ctr", ["--address", socket, "version"]).code === 0, containerd);
    const importImage = (archive: string): void => {
      ctr("images", "import", "--no-unpack=false", archive);
    };
    importImage(path.join(IMAGE_DIR, "pause.oci.tar"));
    log(`${name}: containerd ready (${Math.round(performance.now() - started)} ms)`);

    // kubelet: cgroupfs under a cgroup root of its own (which must exist in every hierarchy), serving on the node's IP.
    for (const hierarchy of cgroupHierarchies()) mkdirSync(path.join(hierarchy, cgroupRoot), { recursive: true });
    const kubeletDir = path.join(dir, "kubelet");
    mkdirSync(path.join(kubeletDir, "manifests"), { recursive: true });
    const kubeletConfig = path.join(dir, "kubelet-config.yaml");
    const resolvConf = path.join(dir, "resolv.conf");
    // The node's own resolver: none (nothing here resolves names off the cluster).
    writeFileSync(resolvConf, "");
    writeFileSync(
      kubeletConfig,
      JSON.stringify({
        apiVersion: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        address: network.ip,
        port: 10250,
        readOnlyPort: 0,
        healthzBindAddress: "127.0.0.1",
        healthzPort: 10248,
        containerRuntimeEndpoint: `unix://${socket}`,
        cgroupDriver: "cgroupfs",
        cgroupRoot: `/${cgroupRoot}`,
        failCgroupV1: false,
        failSwapOn: false,
        makeIPTablesUtilChains: false,
        authentication: { anonymous: { enabled: true }, webhook: { enabled: false } },
        authorization: { mode: "AlwaysAllow" },
        evictionHard: { "memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%" },
        // No image garbage collection: the node's images are imported from archives and no
        // registry serves them again. On a host disk 85% full (the kubelet counts it, not the
        // node's share) the kubelet removed the unused pause image five minutes in, and every
        // pod created after that waited in FailedCreatePodSandBox. 100 turns the GC off
        // (kubelet.go, StartGarbageCollection, with imageMaximumGCAge 0, the default).
        imageGCHighThresholdPercent: 100,
        podLogsDir: path.join(dir, "pod-logs"),
        staticPodPath: path.join(kubeletDir, "manifests"),
        resolvConf,
        ...(options.clusterDns === undefined ? {} : { clusterDNS: [options.clusterDns], clusterDomain: "cluster.local" }),
        serializeImagePulls: false,
        syncFrequency: "10s",
        fileCheckFrequency: "5s",
      }),
    );
    const kubelet = start("kubelet", NODE_BIN.kubelet, [
      "--config",
      kubeletConfig,
      "--kubeconfig",
      options.kubeconfig,
      "--root-dir",
      kubeletDir,
      "--cert-dir",
      path.join(dir, "kubelet-pki"),
      "--hostname-override",
      name,
      "--node-ip",
      network.ips.join(","),
      "--v",
      "1",
    ]);

    // kube-proxy, nftables mode: ClusterIP Services in this node's namespace. It leaves the
    // machine-wide conntrack settings alone (zero: do not set).
    const proxyConfig = path.join(dir, "kube-proxy-config.yaml");
    writeFileSync(
      proxyConfig,
      JSON.stringify({
        apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
        kind: "KubeProxyConfiguration",
        mode: "nftables",
        clientConnection: { kubeconfig: options.kubeconfig },
        hostnameOverride: name,
        clusterCIDR: options.clusterPodCidrs.join(","),
        bindAddress: network.ip,
        healthzBindAddress: "127.0.0.1:10256",
        metricsBindAddress: "127.0.0.1:10249",
        conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: "0s", tcpCloseWaitTimeout: "0s", udpTimeout: "0s", udpStreamTimeout: "0s" },
      }),
    );
    const kubeProxy = start("kube-proxy", NODE_BIN.kubeProxy, ["--config", proxyConfig, "--v", "1"]);

    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await waitWhile(
      `${name}: node Ready`,
      90_000,
      async () => (await core.readNode({ name })).status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true,
      kubelet,
    );
    // Its Services are programmed once it has synced the EndpointSlices.
    await waitWhile(`${name}: kube-proxy synced`, 30_000, () => /Caches are synced.*endpoint slice config/.test(logText("kube-proxy")), kubeProxy);
    log(`${name} Ready (${Math.round(performance.now() - started)} ms after start)`);

    const containerLogLines = (pod: { namespace: string; name: string; uid: string }, container: string): { time: string; text: string }[] => {
      const logDir = path.join(dir, "pod-logs", `${pod.namespace}_${pod.name}_${pod.uid}`, container);
      const files = existsSync(logDir)
        ? readdirSync(logDir)
            .filter((f) => f.endsWith(".log"))
            .sort()
        : [];
      // CRI log lines: <time> <stream> <P|F> <text>
      return files
        .flatMap((f) => readFileSync(path.join(logDir, f), "utf8").split("\n"))
        .filter((line) => line !== "")
        .map((line) => {
          const [time = "", , , ...text] = line.split(" ");
          return { time, text: text.join(" ") };
        });
    };
    return {
      name,
      ip: network.ip,
      netns: network.netns,
      ips: network.ips,
      podSubnet: network.podSubnets[0] ?? "",
      cgroupRoot: `/${cgroupRoot}`,
      dir,
      containerdSocket: socket,
      kubeletLog: path.join(dir, "kubelet.log"),
      importImage,
      ctr,
      listDir: (target) => {
        const r = sh("nsenter", [`--mount=${mountNamespace ?? ""}`, "--", "ls", "-A", target]);
        return r.code === 0 ? r.stdout.split("\n").filter((e) => e !== "") : undefined;
      },
      containerLogLines,
      containerLog: (pod, container) =>
        containerLogLines(pod, container)
          .map((l) => l.text)
          .join("\n"),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
