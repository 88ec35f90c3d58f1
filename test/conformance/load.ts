// Istio's conformance data, from the istio.io/istio module the oracle is built from (built into
// the cache by test/controlplane/build.sh, "istio-testdata"): the goldens of istio-iptables,
// istio-nftables and istio-cni's plugin, and the capture inputs exported from Istio's own test
// table; the cni inputs are the pods of Istio's cni test (cni-cases.ts). Tests that need it skip
// with a reason when it is not built, except under CI, where that is a failure.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { CACHE_DIR } from "../controlplane/harness.ts";
import { cniCasePods } from "./cni-cases.ts";

export const conformanceDir = path.join(CACHE_DIR, "bin", "istio-testdata");

/** undefined when the data is present; otherwise why the suites cannot run. */
export function missingConformanceReason(): string | undefined {
  if (existsSync(path.join(conformanceDir, "capture", "cases.json"))) return undefined;
  return `Istio's conformance data is not built (${conformanceDir}): run scripts/setup.sh`;
}

const configCasesSchema = z.array(z.object({ name: z.string(), golden: z.string(), config: z.record(z.string(), z.unknown()) }));

export interface ConfigCase {
  name: string;
  golden: string;
  /** The whole config of the case: Istio's test base with the case's changes. */
  config: Record<string, unknown>;
}

export function loadConfigCases(suite: "capture" | "nft"): ConfigCase[] {
  const cases = configCasesSchema.parse(JSON.parse(readFileSync(path.join(conformanceDir, suite, "cases.json"), "utf8")));
  return cases.map((c) => ({ ...c, golden: readFileSync(path.join(conformanceDir, suite, c.golden), "utf8") }));
}

export interface PodCase {
  name: string;
  golden: string;
  pod: Record<string, unknown>;
}

export function loadPodCases(): PodCase[] {
  return cniCasePods().map((c) => ({ ...c, golden: readFileSync(path.join(conformanceDir, "cni", c.golden), "utf8") }));
}

/** The capture/ golden form: the save commands around the restore texts, trimmed. */
export function captureTranscript(v4Restore: string, v6Restore: string | null): string {
  const parts = ["iptables-save", "ip6tables-save", v4Restore.trim()];
  if (v6Restore !== null) parts.push(v6Restore.trim());
  parts.push("iptables-save");
  if (v6Restore !== null) parts.push("ip6tables-save");
  return parts.join("\n").trim();
}

/** The cni/ comparison: table name → block text, save lines dropped (docs/testing.md, "Tests"). */
export function blocksByTable(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const piece of text.split("COMMIT")) {
    const lines = piece
      .replace(/^\n+|\n+$/g, "")
      .split("\n")
      .filter((l) => l !== "iptables-save" && l !== "ip6tables-save");
    const first = lines[0];
    if (first?.startsWith("* ")) out.set(first.slice(2), [...lines.slice(1), "COMMIT"].join("\n"));
  }
  return out;
}
