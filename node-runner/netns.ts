// Find a pod's network namespace from the node, without trusting the container runtime
// (DESIGN §7.1): scan /proc (the node-runner runs with hostPID) for processes whose cgroup path
// carries the pod UID, as kubelet names it under cgroup v1 or v2, the cgroupfs or systemd
// driver, containerd or CRI-O; skip the host's own netns and unreadable entries; require the
// netns to hold one of the pod's IPs; prefer the oldest process (the sandbox's pause process).
//
// Everything is read from files under `procRoot`, so fixture trees can stand in for /proc.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";

export interface ResolvedNetns {
  /** Inode number of the network namespace: its identity (also recorded on the pod). */
  readonly inode: string;
  /** A path that refers to the namespace while the process lives: <procRoot>/<pid>/ns/net. */
  readonly path: string;
  readonly pid: number;
  /** Processes of the pod found in that namespace. */
  readonly processes: number;
}

export type NetnsResolution =
  | { readonly found: true; readonly netns: ResolvedNetns }
  | { readonly found: false; readonly reason: "no-process" | "host-netns-only" | "ip-mismatch"; readonly detail: string };

/**
 * The pod UID as it may appear in a cgroup path: kubelet's systemd driver writes dashes as
 * underscores (kubepods-besteffort-pod<uid_with_underscores>.slice); cgroupfs keeps dashes.
 */
export function podUidPattern(uid: string): RegExp {
  if (!/^[0-9A-Za-z_-]{1,64}$/.test(uid)) throw new Error(`not a pod UID: ${JSON.stringify(uid)}`);
  const normalized = uid.toLowerCase().replace(/[-_]/g, "[-_]");
  return new RegExp(`(?:^|[/-])pod${normalized}(?:\\.slice)?(?:/|$)`);
}

/** Does a /proc/<pid>/cgroup file place the process in this pod? */
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

// async for the callers' sake: a CRI lookup or a slower scan may replace the body.
// eslint-disable-next-line @typescript-eslint/require-await
export async function resolvePodNetns(
  pod: { readonly uid: string; readonly ips: readonly string[] },
  options: { readonly procRoot?: string; readonly hostPid?: string } = {},
): Promise<NetnsResolution> {
  const procRoot = options.procRoot ?? "/proc";
  const hostInode = netnsInode(procRoot, options.hostPid ?? "1");
  const pattern = podUidPattern(pod.uid);

  const candidates = new Map<string, { pid: number; start: number; count: number }>();
  let hostOnly = false;
  for (const entry of readdirSync(procRoot)) {
    if (!/^\d+$/.test(entry)) continue;
    const cgroup = readText(path.join(procRoot, entry, "cgroup"));
    if (cgroup === undefined || !cgroupBelongsToPod(cgroup, pattern)) continue;
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
      ? { found: false, reason: "host-netns-only", detail: `processes of pod ${pod.uid} are only in the host network namespace` }
      : { found: false, reason: "no-process", detail: `no process of pod ${pod.uid} found under ${procRoot}` };
  }

  const wanted = new Set(pod.ips.map((ip) => (ip.includes(":") ? expandIPv6(ip) : ip)));
  // Oldest first: the pause process created the sandbox's namespace.
  const ordered = [...candidates.entries()].sort((a, b) => a[1].start - b[1].start || a[1].pid - b[1].pid);
  for (const [inode, c] of ordered) {
    const pidDir = path.join(procRoot, String(c.pid));
    const v4 = localIPv4FromFibTrie(readText(path.join(pidDir, "net", "fib_trie")) ?? "");
    const v6 = ipv6FromIfInet6(readText(path.join(pidDir, "net", "if_inet6")) ?? "");
    if ([...wanted].some((ip) => v4.has(ip) || v6.has(ip))) {
      return { found: true, netns: { inode, path: path.join(pidDir, "ns", "net"), pid: c.pid, processes: c.count } };
    }
  }
  return {
    found: false,
    reason: "ip-mismatch",
    detail: `pod ${pod.uid}: ${candidates.size} network namespace(s) found, none holds ${pod.ips.join(", ") || "(no pod IP)"}`,
  };
}
