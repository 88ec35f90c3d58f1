// A real Kubernetes node for the tests, against the harness's API server: containerd (Debian's)
// with runc, the CNI bridge plugin, kubelet, and the two controllers a node needs to run
// DaemonSets and ServiceAccount-token pods (kube-controller-manager, kube-scheduler). Binaries
// come from test/controlplane/build.sh, images from test/controlplane/images.sh.
//
// Everything the node makes outside its own directory is recorded before it is made and undone
// by stop() or, after a killed run, by the next start (reapStaleNodes): the sysctls kubelet and
// the bridge plugin change, the paths kubelet writes outside its root directory, the dummy link
// that carries the node's IP, the pod bridge, the `kubepods` cgroup trees, every mount.
// Pods reach only each other on the bridge: no gateway, no route off the pod subnet.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, rmdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { pidsWhere } from "../support/processes.ts";
import { CACHE_DIR, freePort, pidAlive, waitFor, type ControlPlane } from "./harness.ts";

export const NODE_BIN = {
  kubelet: path.join(CACHE_DIR, "bin", "kubelet"),
  controllerManager: path.join(CACHE_DIR, "bin", "kube-controller-manager"),
  scheduler: path.join(CACHE_DIR, "bin", "kube-scheduler"),
  cniDir: path.join(CACHE_DIR, "bin", "cni"),
};
export const IMAGE_DIR = path.join(CACHE_DIR, "images");
export const PAUSE_IMAGE = "localhost/pnc/pause:test";

const RUN_PREFIX = "pnc-node-";
/**
 * The pod bridge, made before the CNI plugin sees it, carries the node's IP (the first address of
 * the pod subnet, which host-local never hands out): the kubelet reaches pods for probes, pods
 * reach their hostIP, and nothing is routed further. The plugin runs without isGateway, so it
 * neither gives pods a default route nor turns on IP forwarding: no packet can leave the machine.
 * (kubelet refuses a loopback node IP.)
 */
const POD_BRIDGE = "pnc0";
const NODE_IP = "10.244.0.1";
export const POD_SUBNET = "10.244.0.0/24";
/** What kubelet and the CNI bridge plugin change on the host, restored on stop. */
const SYSCTLS = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"];
/** Paths kubelet and containerd write outside the node's directory (removed on stop when the node made them). */
const FOREIGN_PATHS = ["/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd", "/var/lib/cni", "/etc/cni", "/opt/cni"];
const CGROUP_ROOT = "/sys/fs/cgroup";

/** undefined when a node can start here; otherwise why not. */
export function missingNodeReason(): string | undefined {
  if (process.getuid?.() !== 0) return "a real node needs root";
  const missing = [
    NODE_BIN.kubelet,
    NODE_BIN.controllerManager,
    NODE_BIN.scheduler,
    path.join(NODE_BIN.cniDir, "bridge"),
    path.join(IMAGE_DIR, "pause.oci.tar"),
  ].filter((p) => !existsSync(p));
  if (missing.length > 0)
    return `node binaries or images not built (${missing.map((p) => path.basename(p)).join(", ")}): run test/controlplane/build.sh and test/controlplane/images.sh`;
  for (const tool of ["containerd", "runc", "ctr"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) return `${tool} is not installed (apt-get install containerd runc)`;
  }
  return undefined;
}

interface NodeState {
  readonly sysctls: Record<string, string>;
  /** Of FOREIGN_PATHS, those that existed before the node started (left alone). */
  readonly preexisting: string[];
}

export interface RealNode {
  readonly name: string;
  readonly ip: string;
  readonly dir: string;
  readonly containerdSocket: string;
  /** kubelet's log file. */
  readonly kubeletLog: string;
  /** Import an OCI archive into the node's containerd (the kubelet's k8s.io namespace). */
  importImage(archive: string): void;
  /** Run `ctr` against the node's containerd. */
  ctr(...args: string[]): string;
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

const readSysctl = (key: string): string | undefined => {
  try {
    return readFileSync(path.join("/proc/sys", key), "utf8").trim();
  } catch {
    return undefined;
  }
};

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

/** Undo everything a node run made (its state file says what was there before). */
function cleanUpNode(dir: string): void {
  let state: NodeState = { sysctls: {}, preexisting: FOREIGN_PATHS };
  try {
    state = JSON.parse(readFileSync(path.join(dir, "state.json"), "utf8")) as NodeState;
  } catch {
    // Killed before the state was written: nothing outside the directory was changed yet.
  }
  const pidsFile = path.join(dir, "pids");
  const pids = existsSync(pidsFile)
    ? readFileSync(pidsFile, "utf8")
        .split("\n")
        .filter((l) => l !== "")
        .map(Number)
    : [];
  for (const pid of pids) killGroup(pid, "SIGKILL");
  // containerd's shims and the pods' processes are in no process group of ours.
  for (const pid of pidsWhere((cmdline) => cmdline.startsWith("/usr/bin/containerd-shim") && cmdline.includes(dir))) killPid(pid);
  killCgroupTree("kubepods");
  unmountUnder(dir);
  for (const p of FOREIGN_PATHS) if (!state.preexisting.includes(p)) unmountUnder(p);
  removeCgroupTree("kubepods");
  sh("ip", ["link", "del", POD_BRIDGE]);
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

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // gone
  }
}
function killPid(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}

/** Every cgroup hierarchy's directory of `name` (v1 controllers and the v2 unified tree). */
function cgroupDirs(name: string): string[] {
  const out: string[] = [];
  const visit = (base: string): void => {
    if (existsSync(path.join(base, "cgroup.procs"))) {
      if (existsSync(path.join(base, name))) out.push(path.join(base, name));
      return;
    }
    for (const entry of safeReaddir(base)) visit(path.join(base, entry));
  };
  visit(CGROUP_ROOT);
  return out;
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

export async function startNode(cp: ControlPlane, options: { name?: string; log?: (line: string) => void } = {}): Promise<RealNode> {
  const missing = missingNodeReason();
  if (missing !== undefined) throw new Error(missing);
  const log = options.log ?? ((): void => undefined);
  const name = options.name ?? "pnc-node";
  reapStaleNodes();
  const started = performance.now();

  const dir = mkdtempSync(path.join(os.tmpdir(), `${RUN_PREFIX}${process.pid}-`));
  const pidsFile = path.join(dir, "pids");
  writeFileSync(pidsFile, "");
  const state: NodeState = {
    sysctls: Object.fromEntries(
      SYSCTLS.flatMap((k) => {
        const v = readSysctl(k);
        return v === undefined ? [] : [[k, v]];
      }),
    ),
    preexisting: FOREIGN_PATHS.filter((p) => existsSync(p)),
  };
  writeFileSync(path.join(dir, "state.json"), JSON.stringify(state));

  const children: { name: string; child: ChildProcess; exited: Promise<void> }[] = [];
  const start = (proc: string, command: string, args: string[]) => {
    const out = createWriteStream(path.join(dir, `${proc}.log`));
    const child = spawn(command, args, { detached: true, stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH } });
    child.stdout.pipe(out);
    child.stderr.pipe(out);
    if (child.pid !== undefined) writeFileSync(pidsFile, `${child.pid}\n`, { flag: "a" });
    const exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        resolve();
      });
    });
    const m = { name: proc, child, exited };
    children.push(m);
    return m;
  };
  const alive = (m: { child: ChildProcess }) => m.child.exitCode === null && m.child.signalCode === null;
  const logTail = (proc: string) => {
    try {
      return readFileSync(path.join(dir, `${proc}.log`), "utf8")
        .split("\n")
        .slice(-25)
        .join("\n");
    } catch {
      return "(no log)";
    }
  };
  /** Wait for a probe while the node's process `proc` runs; its log tail tells why it failed. */
  const waitWhile = (what: string, timeoutMs: number, probe: () => Promise<boolean> | boolean, proc: { name: string; child: ChildProcess }) =>
    waitFor(
      what,
      timeoutMs,
      probe,
      () => (alive(proc) ? undefined : `${proc.name} exited; log:\n${logTail(proc.name)}`),
      () => `${proc.name} log:\n${logTail(proc.name)}`,
    );

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    for (const m of [...children].reverse()) {
      if (!alive(m) || m.child.pid === undefined) continue;
      killGroup(m.child.pid, "SIGTERM");
      const pid = m.child.pid;
      const timer = setTimeout(() => {
        killGroup(pid, "SIGKILL");
      }, 5000);
      await m.exited;
      clearTimeout(timer);
    }
    cleanUpNode(dir);
  };

  try {
    // The pod bridge with the node's address.
    must("ip", ["link", "add", POD_BRIDGE, "type", "bridge"]);
    must("ip", ["addr", "add", `${NODE_IP}/24`, "dev", POD_BRIDGE]);
    must("ip", ["link", "set", POD_BRIDGE, "up"]);

    // CNI: the bridge above, host-local addresses kept in the node's directory, no gateway.
    const cniConf = path.join(dir, "cni", "net.d");
    mkdirSync(cniConf, { recursive: true });
    writeFileSync(
      path.join(cniConf, "10-pnc.conflist"),
      JSON.stringify({
        cniVersion: "1.0.0",
        name: "pnc",
        plugins: [
          {
            type: "bridge",
            bridge: POD_BRIDGE,
            isGateway: false,
            ipMasq: false,
            hairpinMode: true,
            ipam: { type: "host-local", ranges: [[{ subnet: POD_SUBNET }]], dataDir: path.join(dir, "cni", "ipam") },
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
        `    bin_dir = ${JSON.stringify(NODE_BIN.cniDir)}`,
        `    conf_dir = ${JSON.stringify(cniConf)}`,
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
    log(`containerd ready (${Math.round(performance.now() - started)} ms)`);

    // The two controllers (DaemonSets, default ServiceAccounts, kube-root-ca.crt; scheduling).
    const adminKubeconfig = cp.writeKubeconfig("node-admin", cp.adminToken);
    start("kube-controller-manager", NODE_BIN.controllerManager, [
      "--kubeconfig",
      adminKubeconfig,
      "--root-ca-file",
      cp.caFile,
      "--controllers",
      "serviceaccount,root-ca-cert-publisher,daemonset,replicaset,deployment,namespace,garbagecollector,podgc,nodelifecycle",
      "--use-service-account-credentials=false",
      "--leader-elect=false",
      "--bind-address",
      "127.0.0.1",
      "--secure-port",
      String(await freePort()),
      "--v",
      "1",
    ]);
    start("kube-scheduler", NODE_BIN.scheduler, [
      "--kubeconfig",
      adminKubeconfig,
      "--authentication-kubeconfig",
      adminKubeconfig,
      "--authorization-kubeconfig",
      adminKubeconfig,
      "--leader-elect=false",
      "--bind-address",
      "127.0.0.1",
      "--secure-port",
      String(await freePort()),
      "--v",
      "1",
    ]);

    // kubelet: cgroupfs on this host's hybrid cgroup v1 layout, out of the host's iptables.
    const kubeletDir = path.join(dir, "kubelet");
    mkdirSync(path.join(kubeletDir, "manifests"), { recursive: true });
    const kubeletConfig = path.join(dir, "kubelet-config.yaml");
    writeFileSync(
      kubeletConfig,
      JSON.stringify({
        apiVersion: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        address: "127.0.0.1",
        port: await freePort(),
        readOnlyPort: 0,
        healthzBindAddress: "127.0.0.1",
        healthzPort: await freePort(),
        containerRuntimeEndpoint: `unix://${socket}`,
        cgroupDriver: "cgroupfs",
        failCgroupV1: false,
        failSwapOn: false,
        makeIPTablesUtilChains: false,
        authentication: { anonymous: { enabled: true }, webhook: { enabled: false } },
        authorization: { mode: "AlwaysAllow" },
        evictionHard: { "memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%" },
        podLogsDir: path.join(dir, "pod-logs"),
        staticPodPath: path.join(kubeletDir, "manifests"),
        resolvConf: "",
        serializeImagePulls: false,
        syncFrequency: "10s",
        fileCheckFrequency: "5s",
      }),
    );
    const kubelet = start("kubelet", NODE_BIN.kubelet, [
      "--config",
      kubeletConfig,
      "--kubeconfig",
      adminKubeconfig,
      "--root-dir",
      kubeletDir,
      "--cert-dir",
      path.join(dir, "kubelet-pki"),
      "--hostname-override",
      name,
      "--node-ip",
      NODE_IP,
      "--v",
      "1",
    ]);
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await waitWhile(
      "kubelet: node Ready",
      90_000,
      async () => (await core.readNode({ name })).status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true,
      kubelet,
    );
    log(`node ${name} Ready (${Math.round(performance.now() - started)} ms after start)`);

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
      ip: NODE_IP,
      dir,
      containerdSocket: socket,
      kubeletLog: path.join(dir, "kubelet.log"),
      importImage,
      ctr,
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
