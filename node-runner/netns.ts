// Find a pod's network namespace from the node, without trusting the container runtime: the
// processes of the kubelet's own cgroup for the pod — read directly from the host's cgroup
// filesystem (O(1)), or, where that layout is not found, by scanning /proc (the node-runner runs
// with hostPID) for processes in that cgroup; only the exact shapes kubelet creates under the
// kubepods hierarchy count, never a UID found elsewhere in a path. Skip the host's own netns
// (known for certain, else refuse), require the netns to hold one of the pod's IPs, refuse when
// more than one netns qualifies, and name the oldest process (the sandbox's pause process).
//
// Everything is read from files under `procRoot`, so fixture trees can stand in for /proc.
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import path from "node:path";
import { errorMessage } from "../lib/errors.ts";

export interface ResolvedNetns {
  /** Inode number of the network namespace: its identity (also recorded on the pod). */
  readonly inode: string;
  /** A path that refers to the namespace while the process lives: <procRoot>/<pid>/ns/net. */
  readonly path: string;
  readonly pid: number;
  /** Processes of the pod found in that namespace. */
  readonly processes: number;
  /** The host's own netns inode: whatever is opened later must never be it. */
  readonly hostInode: string;
}

export type NetnsResolution =
  | { readonly found: true; readonly netns: ResolvedNetns }
  | {
      readonly found: false;
      readonly reason: "no-process" | "host-netns-only" | "ip-mismatch" | "ambiguous-netns" | "host-netns-unknown";
      readonly detail: string;
    };

/**
 * The kubelet's pod cgroup for this UID, as a path pattern over a /proc/<pid>/cgroup path:
 * cgroupfs driver `/kubepods[/burstable|/besteffort]/pod<uid>`, systemd driver
 * `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_with_underscores>.slice`,
 * directly under the kubelet's cgroup root (its `--cgroup-root`, `/` unless configured). Seen
 * from the node-runner's own cgroup namespace the root may appear as `/..` segments, which no
 * cgroup can be named, so they are allowed.
 */
export function podUidPattern(uid: string, cgroupRoot = "/"): RegExp {
  if (!/^[0-9A-Za-z_-]{1,64}$/.test(uid)) throw new Error(`not a pod UID: ${JSON.stringify(uid)}`);
  if (!/^(\/[0-9A-Za-z_.-]+)*\/?$/.test(cgroupRoot) || cgroupRoot.split("/").includes("..")) {
    throw new Error(`not a cgroup root: ${JSON.stringify(cgroupRoot)}`);
  }
  const prefix = cgroupRoot.replace(/\/+$/, "").toLowerCase().replace(/[.]/g, "\\.");
  const dashed = uid.toLowerCase().replace(/_/g, "-");
  const underscored = dashed.replace(/-/g, "_");
  const root = `^(?:/\\.\\.)*${prefix}`;
  const cgroupfs = `/kubepods(?:/burstable|/besteffort)?/pod${dashed}`;
  const systemd = `/kubepods\\.slice(?:/kubepods-burstable\\.slice/kubepods-burstable|/kubepods-besteffort\\.slice/kubepods-besteffort|/kubepods)-pod${underscored}\\.slice`;
  return new RegExp(`${root}(?:${cgroupfs}|${systemd})(?:/|$)`);
}

/** Does a /proc/<pid>/cgroup file place the process in this pod's kubelet cgroup? */
export function cgroupBelongsToPod(cgroupFile: string, uidPattern: RegExp): boolean {
  for (const line of cgroupFile.split("\n")) {
    // hierarchy-ID:controllers:path — the path may itself contain ':'.
    const second = line.indexOf(":", line.indexOf(":") + 1);
    if (second < 0) continue;
    if (uidPattern.test(line.slice(second + 1).toLowerCase())) return true;
  }
  return false;
}

/** Start time (clock ticks since boot) from /proc/<pid>/stat: field 22, after the command name. */
export function processStartTime(statFile: string): number | undefined {
  const close = statFile.lastIndexOf(")");
  if (close < 0) return undefined;
  const fields = statFile.slice(close + 2).split(" ");
  const value = Number(fields[19]);
  return Number.isFinite(value) ? value : undefined;
}

/** Local IPv4 addresses of a netns from /proc/<pid>/net/fib_trie ("/32 host LOCAL" entries). */
export function localIPv4FromFibTrie(fibTrie: string): Set<string> {
  const found = new Set<string>();
  const lines = fibTrie.split("\n");
  for (let i = 0; i < lines.length - 1; i++) {
    const leaf = /\|--\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(lines[i] ?? "");
    if (leaf?.[1] !== undefined && /\/32 host LOCAL/.test(lines[i + 1] ?? "")) found.add(leaf[1]);
  }
  return found;
}

/** IPv6 addresses of a netns from /proc/<pid>/net/if_inet6 (32 hex digits per address). */
export function ipv6FromIfInet6(ifInet6: string): Set<string> {
  const found = new Set<string>();
  for (const line of ifInet6.split("\n")) {
    const hex = line.trim().split(/\s+/)[0];
    if (hex === undefined || !/^[0-9a-f]{32}$/i.test(hex)) continue;
    found.add(expandIPv6(hex.match(/.{4}/g)?.join(":") ?? ""));
  }
  return found;
}

/** Full, lower-case, zero-padded IPv6 text, so that addresses compare as strings. */
export function expandIPv6(address: string): string {
  const [head = "", tail] = address.toLowerCase().split("::");
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  return groups.map((g) => g.padStart(4, "0")).join(":");
}

// /proc files live in memory: synchronous reads take microseconds, while a promise per file
// made a scan of a few hundred processes take tens of milliseconds.
function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

function netnsInode(procRoot: string, pid: string): string | undefined {
  try {
    const link = readlinkSync(path.join(procRoot, pid, "ns", "net"));
    return /^net:\[(\d+)\]$/.exec(link)?.[1];
  } catch {
    return undefined;
  }
}

/** The network namespaces some process is in, as the node's /proc (hostPID) shows them now. */
export function liveNetnsInodes(procRoot: string): Set<string> {
  const live = new Set<string>();
  for (const pid of readdirSync(procRoot)) {
    if (!/^\d+$/.test(pid)) continue;
    const inode = netnsInode(procRoot, pid);
    if (inode !== undefined) live.add(inode);
  }
  return live;
}

/**
 * The host's own network namespace. The node-runner runs with hostNetwork, so its own netns
 * (/proc/self) is the host's; /proc/1 (hostPID) must agree. Undefined when it cannot be known
 * for certain: then nothing may be programmed.
 */
export function hostNetnsInode(procRoot: string): { inode: string } | { error: string } {
  const self = netnsInode(procRoot, "self");
  if (self === undefined) return { error: `cannot read ${path.join(procRoot, "self", "ns", "net")}` };
  const init = netnsInode(procRoot, "1");
  if (init !== undefined && init !== self) {
    return { error: `the node-runner's netns (${self}) is not the one of PID 1 (${init}): it must run with hostNetwork and hostPID` };
  }
  return { inode: self };
}

/** Where the kubelet puts a pod's cgroup, relative to a hierarchy's root (all drivers and QoS classes). */
export function podCgroupDirs(uid: string, cgroupRoot = "/"): string[] {
  podUidPattern(uid, cgroupRoot); // validates both
  const root = cgroupRoot.replace(/\/+$/, "");
  const dashed = uid.toLowerCase().replace(/_/g, "-");
  const underscored = dashed.replace(/-/g, "_");
  return [
    `${root}/kubepods/pod${dashed}`,
    `${root}/kubepods/burstable/pod${dashed}`,
    `${root}/kubepods/besteffort/pod${dashed}`,
    `${root}/kubepods.slice/kubepods-pod${underscored}.slice`,
    `${root}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${underscored}.slice`,
    `${root}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${underscored}.slice`,
  ];
}

/** The hierarchies a pod's processes are listed in: the unified one, then v1's usual ones. */
const HIERARCHIES = ["", "unified", "systemd", "pids", "memory", "cpu,cpuacct"];

/**
 * The processes of the kubelet's cgroup for the pod, read directly (O(1) in the node's process
 * count): the pod cgroup's own `cgroup.procs` and those of its children (the containers').
 * Undefined when no such cgroup exists under `cgroupFs` (another layout: the caller scans /proc).
 * Synchronous on purpose, like the /proc reads: a few lookups in the kernel's cgroup filesystem
 * take microseconds, and each asynchronous one a round trip through libuv's thread pool (a
 * millisecond in all on a busy runner).
 */
export function podCgroupPids(uid: string, options: { readonly cgroupFs: string; readonly cgroupRoot?: string }): number[] | undefined {
  const dirs = podCgroupDirs(uid, options.cgroupRoot);
  // A node's pods share one hierarchy: where the last one was found is tried first.
  const last = lastPodHierarchy.get(options.cgroupFs);
  const hierarchies = last === undefined ? HIERARCHIES : [last, ...HIERARCHIES.filter((h) => h !== last)];
  for (const hierarchy of hierarchies) {
    for (const dir of dirs) {
      const podDir = path.join(options.cgroupFs, hierarchy, dir);
      // Most places do not exist: a stat that does not throw costs less than a failed readdir.
      if (statSync(podDir, { throwIfNoEntry: false })?.isDirectory() !== true) continue;
      let children: string[];
      try {
        children = readdirSync(podDir, { withFileTypes: true })
          .filter((e) => e.isDirectory())
          .map((e) => path.join(podDir, e.name));
      } catch {
        continue; // removed meanwhile
      }
      lastPodHierarchy.set(options.cgroupFs, hierarchy);
      return [podDir, ...children].flatMap((cgroup) =>
        (readText(path.join(cgroup, "cgroup.procs")) ?? "")
          .split("\n")
          .filter((line) => /^\d+$/.test(line))
          .map(Number),
      );
    }
  }
  return undefined;
}

/** Per cgroup filesystem: the hierarchy the last pod cgroup was found in. */
const lastPodHierarchy = new Map<string, string>();

/** Processes scanned between two turns of the event loop: a scan of thousands never holds it long. */
const SCAN_BATCH = 256;

/** The fallback: every process's cgroup file read, in batches, yielding to the event loop between them. */
async function scanProcForPod(procRoot: string, pattern: RegExp): Promise<string[]> {
  const entries = readdirSync(procRoot).filter((entry) => /^\d+$/.test(entry));
  const found: string[] = [];
  for (let i = 0; i < entries.length; i += SCAN_BATCH) {
    if (i > 0) await new Promise((resolve) => setImmediate(resolve));
    for (const entry of entries.slice(i, i + SCAN_BATCH)) {
      if (cgroupBelongsToPod(readText(path.join(procRoot, entry, "cgroup")) ?? "", pattern)) found.push(entry);
    }
  }
  return found;
}

/**
 * Find the pod's network namespace. The kubelet's pod cgroup is read directly when it can be
 * found under `cgroupFs`; otherwise every process under `procRoot` is scanned for one whose
 * cgroup is the pod's (slower: it grows with the node's process count).
 */
export async function resolvePodNetns(
  pod: { readonly uid: string; readonly ips: readonly string[] },
  options: { readonly procRoot?: string; readonly cgroupRoot?: string; readonly cgroupFs?: string } = {},
): Promise<NetnsResolution & { readonly method?: "cgroup" | "proc-scan" }> {
  const procRoot = options.procRoot ?? "/proc";
  const host = hostNetnsInode(procRoot);
  if ("error" in host) return { found: false, reason: "host-netns-unknown", detail: host.error };
  const hostInode = host.inode;
  const pattern = podUidPattern(pod.uid, options.cgroupRoot);

  const direct = podCgroupPids(pod.uid, {
    cgroupFs: options.cgroupFs ?? "/sys/fs/cgroup",
    ...(options.cgroupRoot === undefined ? {} : { cgroupRoot: options.cgroupRoot }),
  });
  const method = direct === undefined ? "proc-scan" : "cgroup";
  // With the direct read the cgroup is the kubelet's by its path; a scan checks each process's.
  const pids = direct?.map(String) ?? (await scanProcForPod(procRoot, pattern));

  const candidates = new Map<string, { pid: number; start: number; count: number }>();
  let hostOnly = false;
  for (const entry of pids) {
    const inode = netnsInode(procRoot, entry);
    if (inode === undefined) continue; // exited meanwhile, or not readable
    if (inode === hostInode) {
      hostOnly = true; // a hostNetwork pod, or a process that has not joined the sandbox yet
      continue;
    }
    const start = processStartTime(readText(path.join(procRoot, entry, "stat")) ?? "") ?? Number.MAX_SAFE_INTEGER;
    const pid = Number(entry);
    const seen = candidates.get(inode);
    if (seen === undefined) candidates.set(inode, { pid, start, count: 1 });
    else {
      seen.count++;
      if (start < seen.start || (start === seen.start && pid < seen.pid)) Object.assign(seen, { pid, start });
    }
  }
  if (candidates.size === 0) {
    return hostOnly
      ? { found: false, reason: "host-netns-only", detail: `processes of pod ${pod.uid} are only in the host network namespace`, method }
      : { found: false, reason: "no-process", detail: `no process of pod ${pod.uid} found (${method})`, method };
  }

  const wanted = new Set(pod.ips.map((ip) => (ip.includes(":") ? expandIPv6(ip) : ip)));
  const holding = [...candidates.entries()].filter(([, c]) => {
    const pidDir = path.join(procRoot, String(c.pid));
    const v4 = localIPv4FromFibTrie(readText(path.join(pidDir, "net", "fib_trie")) ?? "");
    const v6 = ipv6FromIfInet6(readText(path.join(pidDir, "net", "if_inet6")) ?? "");
    return [...wanted].some((ip) => v4.has(ip) || v6.has(ip));
  });
  if (holding.length > 1) {
    // Two namespaces of "this pod" with its IP: one is not what it claims. Never choose.
    return {
      found: false,
      reason: "ambiguous-netns",
      detail: `pod ${pod.uid}: ${holding.length} network namespaces (${holding.map(([inode]) => inode).join(", ")}) hold ${pod.ips.join(", ")}`,
      method,
    };
  }
  const only = holding[0];
  if (only === undefined) {
    return {
      found: false,
      reason: "ip-mismatch",
      detail: `pod ${pod.uid}: ${candidates.size} network namespace(s) found, none holds ${pod.ips.join(", ") || "(no pod IP)"}`,
      method,
    };
  }
  const [inode, c] = only;
  return { found: true, netns: { inode, path: path.join(procRoot, String(c.pid), "ns", "net"), pid: c.pid, processes: c.count, hostInode }, method };
}

/** An open descriptor of a pod's network namespace, for the length of one apply. */
/**
 * Whether the process a namespace was resolved through still lives in it: its `ns/net` link
 * still names that inode. A PID reused meanwhile cannot pass (the inode is this namespace's,
 * kept alive by the node-runner's descriptor, and a new process is not in it).
 */
export function netnsStillInhabited(netns: ResolvedNetns): boolean {
  try {
    return readlinkSync(netns.path) === `net:[${netns.inode}]`;
  } catch {
    return false;
  }
}

export interface OpenNetns {
  readonly fd: number;
  readonly inode: string;
  /** Whether legacy (x_tables) tables exist in the namespace now; undefined when unknown. */
  legacyTables(): boolean | undefined;
  close(): void;
}

export class NetnsGoneError extends Error {
  override name = "NetnsGoneError";
}

/**
 * Open the resolved namespace once. The descriptor keeps naming that namespace whatever
 * happens to the process afterwards; its inode must still be the one resolved (the process
 * may have exited and its PID been reused) and never the host's.
 */
export function openNetns(netns: ResolvedNetns): OpenNetns {
  let fd: number;
  try {
    fd = openSync(netns.path, "r");
  } catch (err) {
    throw new NetnsGoneError(`cannot open ${netns.path}: ${errorMessage(err)}`);
  }
  const inode = fstatSync(fd, { bigint: true }).ino.toString();
  if (inode !== netns.inode || inode === netns.hostInode) {
    closeSync(fd);
    throw new NetnsGoneError(`${netns.path} is now network namespace ${inode}, not ${netns.inode}: the process changed`);
  }
  let open = true;
  return {
    fd,
    inode,
    legacyTables: () => legacyTablesIn(path.dirname(path.dirname(netns.path)), inode),
    close: () => {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/**
 * Whether iptables-legacy has instantiated any table in a process's network namespace: the
 * kernel lists them in /proc/<pid>/net/ip{,6}_tables_names (iptables-nft's never appear there).
 * No table, no legacy rule: the variant probe can skip iptables-legacy-save. Undefined when the
 * files cannot be read or the process is no longer in namespace `inode` afterwards (PID reuse).
 */
export function legacyTablesIn(pidDir: string, inode: string): boolean | undefined {
  const names = ["ip_tables_names", "ip6_tables_names"].map((file) => readText(path.join(pidDir, "net", file)));
  if (names.some((text) => text === undefined)) return undefined;
  if (netnsInode(path.dirname(pidDir), path.basename(pidDir)) !== inode) return undefined;
  return names.some((text) => (text ?? "").trim() !== "");
}
