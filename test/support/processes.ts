// This machine's processes, as harnesses and benchmarks look at them through /proc.

import { readdirSync, readFileSync } from "node:fs";

/** Processes whose command line (arguments joined by NUL) matches; those that exit meanwhile are skipped. */
export function pidsWhere(matches: (cmdline: string) => boolean): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return matches(readFileSync(`/proc/${pid}/cmdline`, "utf8"));
      } catch {
        return false; // exited
      }
    })
    .map(Number);
}

/** A memory figure of /proc/<pid>/status in MiB (VmHWM: peak resident; VmRSS: resident now; RssAnon: of it, not file-backed); NaN when it is gone. */
export function statusMiB(pid: number | undefined, field: "VmHWM" | "VmRSS" | "RssAnon"): number {
  if (pid === undefined) return NaN;
  try {
    const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m?.[1] === undefined ? NaN : Number(m[1]) / 1024;
  } catch {
    return NaN;
  }
}

/** A process's peak resident memory (VmHWM) in MiB; NaN when it is gone. */
export function peakRssMiB(pid: number | undefined): number {
  return statusMiB(pid, "VmHWM");
}

/**
 * CPU time a process and its waited-for children have used, in seconds (utime + stime + cutime
 * + cstime from /proc/<pid>/stat); NaN when it is gone.
 */
export function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
    return ticks / 100; // USER_HZ
  } catch {
    return NaN;
  }
}
