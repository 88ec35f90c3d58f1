// Istio's own capture code as a child process (test/istio-oracle, built by
// test/controlplane/build.sh): one JSON line per request, one per answer, in order.
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { z } from "zod";
import { CACHE_DIR } from "../controlplane/harness.ts";

export const ORACLE_BIN = path.join(CACHE_DIR, "bin", "istio-oracle");

/** undefined when the oracle is built; otherwise why the parity tests cannot run. */
export function missingOracleReason(): string | undefined {
  return existsSync(ORACLE_BIN) ? undefined : `Istio oracle not built (${ORACLE_BIN}): run test/controlplane/build.sh`;
}

const answerSchema = z.object({
  refused: z.string().optional(),
  iptables: z.string().optional(),
  nft: z.string().optional(),
  nftRefused: z.string().optional(),
  error: z.string().optional(),
});
export type OracleAnswer = z.infer<typeof answerSchema>;

export type OracleRequest = { pod: unknown } | { capture: Record<string, unknown> } | { nft: Record<string, unknown> };

export class IstioOracle {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting: { resolve: (a: OracleAnswer) => void; reject: (e: Error) => void }[] = [];
  private stderr = "";

  constructor() {
    this.child = spawn(ORACLE_BIN, [], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stderr.on("data", (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-4000);
    });
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      const next = this.waiting.shift();
      if (next === undefined) return;
      try {
        next.resolve(answerSchema.parse(JSON.parse(line)));
      } catch (err) {
        next.reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
    this.child.on("exit", (code) => {
      for (const w of this.waiting.splice(0)) w.reject(new Error(`istio-oracle exited (${code}): ${this.stderr}`));
    });
  }

  ask(request: OracleRequest): Promise<OracleAnswer> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.child.stdin.write(`${JSON.stringify(request)}\n`);
    });
  }

  close(): void {
    this.child.stdin.end();
  }
}
