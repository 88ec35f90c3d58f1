// Real "pods" for tests (docs/architecture.md §10): each is a network namespace with a veth into an isolated
// bridge namespace that has no uplink, an address from the test range, a pause-like process
// inside, placed in a cgroup whose path carries the pod UID the way kubelet names it. The
// node-runner finds them exactly as it would on a node. Nothing touches the host's netns.
//
// Names carry the prefix pnct-<pid>-; whatever a killed run left behind is removed by the
// next TestPods.create().
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readlinkSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pidAlive } from "../controlplane/harness.ts";

export const TEST_PREFIX = "pnct-";
const SUBNET = "10.251.0";

export type CgroupLayout = "v1-cgroupfs-containerd" | "v2-systemd-containerd" | "v2-systemd-crio";

function sh(argv: string[], input?: string): string {
  return execFileSync(argv[0] as string, argv.slice(1), { encoding: "utf8", input, stdio: ["pipe", "pipe", "pipe"] });
}

/** undefined when real test pods can be made here; otherwise why not. */
export function testPodsUnavailableReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, cgroups)";
  for (const tool of ["ip", "nsenter", "iptables-restore"]) {
    try {
      sh(["which", tool]);
    } catch {
      return `needs ${tool} (apt-get install iproute2 util-linux iptables)`;
    }
  }
  return undefined;
}

function unifiedRoot(): string {
  return existsSync("/sys/fs/cgroup/cgroup.controllers") ? "/sys/fs/cgroup" : "/sys/fs/cgroup/unified";
}

function v1Root(): string | undefined {
  for (const h of ["pids", "systemd", "memory", "cpu"]) {
    const dir = `/sys/fs/cgroup/${h}`;
    if (existsSync(path.join(dir, "cgroup.procs")) && !existsSync(path.join(dir, "cgroup.controllers"))) return dir;
  }
  return undefined;
}

/** Remove a cgroup subtree: children first; fails (throws) while processes remain. */
function removeCgroupTree(dir: string): void {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) removeCgroupTree(path.join(dir, entry.name));
  }
  rmdirSync(dir);
}

export interface TestPod {
  readonly name: string;
  readonly uid: string;
  readonly netns: string;
  readonly ip: string;
  readonly pausePid: number;
  readonly cgroupDir: string;
  /** Run a command inside the pod's network namespace (optionally as another user). */
  exec(argv: string[], options?: { uid?: number; gid?: number; input?: string }): string;
  /** Spawn a long-running process inside the pod's network namespace. */
  spawn(argv: string[], options?: { uid?: number; gid?: number }): ChildProcess;
  /** The netns inode, as the node-runner records it. */
  netnsInode(): string;
}

export class TestPods {
  private readonly run: string;
  /** Where the pods' cgroups live, as kubelet's --cgroup-root would place them (the node-runner's --cgroup-root). */
  readonly cgroupRoot: string;
  private readonly bridge: string;
  private readonly pods: TestPod[] = [];
  private readonly processes: ChildProcess[] = [];
  private readonly cgroupRoots: string[] = [];
  private readonly impostors: string[] = [];
  private next = 10;

  private constructor() {
    this.run = `${TEST_PREFIX}${process.pid}-${randomUUID().slice(0, 6)}`;
    this.cgroupRoot = `/${this.run}`;
    this.bridge = `${this.run}-br`;
  }

  static create(): TestPods {
    TestPods.reapStale();
    const t = new TestPods();
    sh(["ip", "netns", "add", t.bridge]);
    sh(["ip", "-n", t.bridge, "link", "set", "lo", "up"]);
    sh(["ip", "-n", t.bridge, "link", "add", "br0", "type", "bridge"]);
    sh(["ip", "-n", t.bridge, "addr", "add", `${SUBNET}.1/24`, "dev", "br0"]);
    sh(["ip", "-n", t.bridge, "link", "set", "br0", "up"]);
    return t;
  }

  /** Remove namespaces and cgroups of runs whose process is gone. */
  static reapStale(): void {
    const alive = (name: string): boolean => {
      const pid = /^pnct-(\d+)-/.exec(name)?.[1];
      return pid !== undefined && pidAlive(Number(pid));
    };
    for (const line of sh(["ip", "netns", "list"]).split("\n")) {
      const name = line.split(" ")[0] ?? "";
      if (!name.startsWith(TEST_PREFIX) || alive(name)) continue;
      for (const pid of pidsInNetns(name)) killQuietly(pid);
      sh(["ip", "netns", "del", name]);
    }
    for (const root of [unifiedRoot(), v1Root()]) {
      if (root === undefined || !existsSync(root)) continue;
      for (const entry of readdirSync(root)) {
        if (!entry.startsWith(TEST_PREFIX) || alive(entry)) continue;
        try {
          removeCgroupTree(path.join(root, entry));
        } catch {
          // processes still inside: left for the kernel to empty; retried next time
        }
      }
    }
  }

  /**
   * A pod's sandbox: its own network namespace on the test bridge, a pause process in the pod's
   * kubelet cgroup. `hostNetwork`: as the kubelet runs such a pod, its process stays in the
   * node's (here this test's) network namespace; it has no namespace to exec in, and the node's
   * address.
   */
  add(options: { layout?: CgroupLayout; name?: string; uid?: string; hostNetwork?: boolean } = {}): TestPod {
    const index = this.next++;
    const layout = options.layout ?? "v2-systemd-containerd";
    const uid = options.uid ?? randomUUID();
    const name = options.name ?? `pod-${index}`;
    if (options.hostNetwork === true) return this.addHostNetwork(name, uid, layout);
    const netns = `${this.run}-p${index}`;
    const ip = `${SUBNET}.${index}`;
    const hostSide = `vp${index}`;
    sh(["ip", "netns", "add", netns]);
    sh(["ip", "-n", netns, "link", "set", "lo", "up"]);
    sh(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", hostSide, "netns", this.bridge]);
    sh(["ip", "-n", this.bridge, "link", "set", hostSide, "master", "br0", "up"]);
    sh(["ip", "-n", netns, "addr", "add", `${ip}/24`, "dev", "eth0"]);
    sh(["ip", "-n", netns, "link", "set", "eth0", "up"]);
    sh(["ip", "-n", netns, "route", "add", "default", "via", `${SUBNET}.1`]);

    const cgroupDir = this.cgroupFor(layout, uid);
    mkdirSync(cgroupDir, { recursive: true });
    const pause = spawn("nsenter", [`--net=/run/netns/${netns}`, "sleep", "infinity"], { stdio: "ignore", detached: true });
    if (pause.pid === undefined) throw new Error("could not start the pause process");
    writeFileSync(path.join(cgroupDir, "cgroup.procs"), String(pause.pid));
    this.processes.push(pause);
    // The sandbox exists once its process has entered the namespace (nsenter does so after it
    // starts): a pod is handed out only then, as the kubelet reports one only after its sandbox runs.
    waitInNetns(pause.pid, statSync(`/run/netns/${netns}`).ino);

    const nsArgs = (o: { uid?: number; gid?: number }): string[] => [
      `--net=/run/netns/${netns}`,
      ...(o.uid === undefined ? [] : [`--setuid=${o.uid}`, `--setgid=${o.gid ?? o.uid}`]),
    ];
    const pod: TestPod = {
      name,
      uid,
      netns,
      ip,
      pausePid: pause.pid,
      cgroupDir,
      exec: (argv, o = {}) => sh(["nsenter", ...nsArgs(o), ...argv], o.input),
      spawn: (argv, o = {}) => {
        const child = spawn("nsenter", [...nsArgs(o), ...argv], { stdio: ["ignore", "pipe", "pipe"] });
        this.processes.push(child);
        return child;
      },
      netnsInode: () => sh(["stat", "-L", "-c", "%i", `/run/netns/${netns}`]).trim(),
    };
    this.pods.push(pod);
    return pod;
  }

  private addHostNetwork(name: string, uid: string, layout: CgroupLayout): TestPod {
    const cgroupDir = this.cgroupFor(layout, uid);
    mkdirSync(cgroupDir, { recursive: true });
    const pause = spawn("sleep", ["infinity"], { stdio: "ignore", detached: true });
    if (pause.pid === undefined) throw new Error("could not start the pause process");
    writeFileSync(path.join(cgroupDir, "cgroup.procs"), String(pause.pid));
    this.processes.push(pause);
    const noNamespace = (): never => {
      throw new Error(`pod ${name} uses the node's network namespace: nothing to exec in`);
    };
    return { name, uid, netns: "", ip: "127.0.0.1", pausePid: pause.pid, cgroupDir, exec: noNamespace, spawn: noNamespace, netnsInode: noNamespace };
  }

  private cgroupFor(layout: CgroupLayout, uid: string): string {
    const container = randomUUID().replace(/-/g, "");
    if (layout === "v1-cgroupfs-containerd") {
      const root = v1Root();
      if (root === undefined) throw new Error("no cgroup v1 hierarchy on this machine");
      this.cgroupRoots.push(path.join(root, this.run));
      return path.join(root, this.run, "kubepods", "besteffort", `pod${uid}`, container);
    }
    const root = unifiedRoot();
    this.cgroupRoots.push(path.join(root, this.run));
    const slice = `kubepods-besteffort-pod${uid.replace(/-/g, "_")}.slice`;
    const scope = layout === "v2-systemd-crio" ? `crio-${container}.scope` : `cri-containerd-${container}.scope`;
    return path.join(root, this.run, "kubepods.slice", "kubepods-besteffort.slice", slice, scope);
  }

  /** Kill the pod's processes and delete its namespace (the sandbox is gone). */
  async removePod(pod: TestPod): Promise<void> {
    await this.kill(this.processes.filter((c) => pidsInNetns(pod.netns).includes(c.pid ?? -1) || c.pid === pod.pausePid));
    for (const pid of pidsInNetns(pod.netns)) killQuietly(pid);
    sh(["ip", "netns", "del", pod.netns]);
    removeCgroupTree(path.dirname(pod.cgroupDir));
  }

  private async kill(children: ChildProcess[]): Promise<void> {
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
              resolve();
              return;
            }
            child.once("exit", () => {
              resolve();
            });
            killQuietly(child.pid);
          }),
      ),
    );
  }

  /**
   * An attacker's process: its own netns holding `ip` (not on the bridge),
   * placed in the cgroup `<cgroup root>/<cgroupPath>` of the unified hierarchy, which may imitate
   * a pod's. Removed with the other pods.
   */
  addImpostor(options: { ip: string; cgroupPath: string }): { netns: string; pid: number; inode: string } {
    const index = this.next++;
    const netns = `${this.run}-x${index}`;
    sh(["ip", "netns", "add", netns]);
    // A veth pair inside the namespace (no dummy module on every kernel): no way out of it.
    sh(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    sh(["ip", "-n", netns, "addr", "add", `${options.ip}/32`, "dev", "eth0"]);
    sh(["ip", "-n", netns, "link", "set", "eth0", "up"]);
    const root = unifiedRoot();
    this.cgroupRoots.push(path.join(root, this.run));
    const cgroupDir = path.join(root, this.run, options.cgroupPath);
    mkdirSync(cgroupDir, { recursive: true });
    const proc = spawn("nsenter", [`--net=/run/netns/${netns}`, "sleep", "infinity"], { stdio: "ignore", detached: true });
    if (proc.pid === undefined) throw new Error("could not start the impostor");
    writeFileSync(path.join(cgroupDir, "cgroup.procs"), String(proc.pid));
    this.processes.push(proc);
    this.impostors.push(netns);
    return { netns, pid: proc.pid, inode: sh(["stat", "-L", "-c", "%i", `/run/netns/${netns}`]).trim() };
  }

  /** Run a command inside a namespace made here (an impostor's). */
  execIn(netns: string, argv: string[]): string {
    return sh(["nsenter", `--net=/run/netns/${netns}`, ...argv]);
  }

  async destroy(): Promise<void> {
    await this.kill(this.processes);
    for (const netns of this.impostors) {
      for (const pid of pidsInNetns(netns)) killQuietly(pid);
      sh(["ip", "netns", "del", netns]);
    }
    for (const pod of this.pods) {
      for (const pid of pidsInNetns(pod.netns)) killQuietly(pid);
      try {
        sh(["ip", "netns", "del", pod.netns]);
      } catch {
        // removed earlier
      }
    }
    sh(["ip", "netns", "del", this.bridge]);
    for (const root of new Set(this.cgroupRoots)) removeCgroupTree(root);
  }
}

function pidsInNetns(netns: string): number[] {
  try {
    return sh(["ip", "netns", "pids", netns])
      .split("\n")
      .filter((l) => l !== "")
      .map(Number);
  } catch {
    return [];
  }
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}

/** Wait (at most 5 s) until the process is in the network namespace with this inode. */
function waitInNetns(pid: number, inode: number): void {
  const wanted = `net:[${inode}]`;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 500; i++) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) === wanted) return;
    } catch {
      // not readable yet, or gone: tried again, then reported
    }
    Atomics.wait(pause, 0, 0, 10);
  }
  throw new Error(`the pause process ${pid} did not enter its network namespace within 5 s`);
}
