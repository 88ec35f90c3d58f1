// The machine a benchmark ran on, printed with every table.
import { execFileSync, spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import os from "node:os";
import type { IptablesVariant } from "../node-runner/apply/records.ts";

/** The iptables variant this machine's `iptables` is: the floors run the tool the node-runner would. */
export function machineIptablesVariant(): IptablesVariant {
  return /nf_tables/.test(execFileSync("iptables", ["--version"], { encoding: "utf8" })) ? "iptables-nft" : "iptables-legacy";
}

/**
 * The floor of a restore: `nsenter` + `<variant>-restore --noflush` of `input` in a namespace,
 * timed inside bash (no fork for the clock) — the tools alone, without a Node parent. In ms.
 */
export function shellTimedRestore(variant: IptablesVariant, netnsPath: string, input: string): number {
  const out = execFileSync("bash", ["-c", `t=$EPOCHREALTIME; nsenter --net="$1" ${variant}-restore --noflush; echo $t $EPOCHREALTIME`, "bash", netnsPath], {
    input,
    encoding: "utf8",
  });
  const [start = 0, end = 0] = out.trim().split(" ").map(Number);
  return (end - start) * 1000;
}

export function machineDescription(): string {
  const cpus = os.cpus();
  let iptables = "";
  try {
    iptables = execFileSync("iptables", ["--version"], { encoding: "utf8" }).trim();
  } catch {
    iptables = "iptables: not found";
  }
  return [
    `machine: ${cpus[0]?.model ?? "unknown CPU"} × ${cpus.length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
    `kernel: ${os.type()} ${os.release()}; node ${process.version}; ${iptables}`,
    `date: ${new Date().toISOString()}`,
  ].join("\n");
}

export function summarize(samplesMs: readonly number[]): { min: number; median: number; p95: number; p99: number; max: number; mean: number } {
  const s = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
  return { min: s[0] ?? NaN, median: at(0.5), p95: at(0.95), p99: at(0.99), max: s[s.length - 1] ?? NaN, mean: s.reduce((a, b) => a + b, 0) / s.length };
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (typeof c === "number" ? c.toFixed(2) : c)))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const line = (r: (string | number)[]): string => `| ${r.map((c, i) => String(c).padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(cells[0] ?? []), `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`, ...cells.slice(1).map(line)].join("\n");
}

/** Processes on this machine now. */
export function processCount(): number {
  return readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).length;
}

/**
 * A busy node: `count` idle processes in their own process group, resolved once they exist;
 * `stop` kills the group. Nothing is started for 0.
 */
export async function idleProcesses(count: number): Promise<{ stop: () => void }> {
  if (count <= 0) return { stop: () => undefined };
  const group = spawn("sh", ["-c", `for i in $(seq ${count}); do sleep 3600 & done; wait`], { detached: true, stdio: "ignore" });
  while (processCount() < count) await new Promise((r) => setTimeout(r, 200));
  return {
    stop: () => {
      if (group.pid !== undefined) process.kill(-group.pid, "SIGKILL");
    },
  };
}

/**
 * What a benchmark made (idle processes, a control plane, namespaces, scratch directories),
 * undone at its end, when it fails and when it is interrupted (Ctrl-C, SIGTERM): the idle processes live
 * in a process group of their own and would otherwise outlive it. Steps run once, the last
 * added first; a step that fails is reported and the others still run.
 */
export class Teardown {
  private readonly steps: (() => unknown)[] = [];
  private running: Promise<void> | undefined;

  constructor() {
    for (const [signal, code] of [
      ["SIGINT", 130],
      ["SIGTERM", 143],
    ] as const) {
      process.once(signal, () => {
        console.error(`\n${signal}: cleaning up`);
        void this.run().finally(() => process.exit(code));
      });
    }
    // A benchmark that fails before its own try/finally (a component that does not start) must
    // not leave its idle processes and control plane behind: report, undo, exit 1.
    process.once("uncaughtException", (err) => {
      console.error(err);
      void this.run().finally(() => process.exit(1));
    });
  }

  add(step: () => unknown): void {
    this.steps.push(step);
  }

  run(): Promise<void> {
    this.running ??= (async () => {
      for (const step of this.steps.reverse()) {
        try {
          await step();
        } catch (err) {
          console.error(`cleanup step failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    })();
    return this.running;
  }
}
