// Loads Istio's conformance data (../shared/conformance/istio, or $ISTIO_CONFORMANCE_DIR).
// The data is not part of this repository; tests that need it skip with a reason when it is
// absent, except under CI, where its absence is a failure.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export const conformanceDir = path.resolve(
  process.env.ISTIO_CONFORMANCE_DIR ?? path.join(repoRoot, "../shared/conformance/istio"),
);

/** undefined when the data is present; otherwise why the suites cannot run. */
export function missingConformanceReason(): string | undefined {
  if (existsSync(path.join(conformanceDir, "capture", "cases.json"))) return undefined;
  return `Istio conformance data not found at ${conformanceDir} (set ISTIO_CONFORMANCE_DIR)`;
}

const configCasesSchema = z.object({
  base: z.record(z.string(), z.unknown()),
  cases: z.array(z.object({ name: z.string(), golden: z.string(), config: z.record(z.string(), z.unknown()) })),
});

const podCasesSchema = z.object({
  cases: z.array(z.object({ name: z.string(), golden: z.string(), pod: z.record(z.string(), z.unknown()) })),
});

export interface ConfigCase {
  name: string;
  golden: string;
  /** base with the case's overrides applied (arrays replaced, not merged). */
  config: Record<string, unknown>;
}

export function loadConfigCases(suite: "capture" | "nft"): ConfigCase[] {
  const data = configCasesSchema.parse(JSON.parse(readFileSync(path.join(conformanceDir, suite, "cases.json"), "utf8")));
  return data.cases.map((c) => ({
    name: c.name,
    golden: readFileSync(path.join(conformanceDir, suite, c.golden), "utf8"),
    config: { ...data.base, ...c.config },
  }));
}

export interface PodCase {
  name: string;
  golden: string;
  pod: Record<string, unknown>;
}

export function loadPodCases(): PodCase[] {
  const data = podCasesSchema.parse(JSON.parse(readFileSync(path.join(conformanceDir, "cni", "cases.json"), "utf8")));
  return data.cases.map((c) => ({
    name: c.name,
    golden: readFileSync(path.join(conformanceDir, "cni", c.golden), "utf8"),
    pod: c.pod,
  }));
}

/** The capture/ golden form: the save commands around the restore texts, trimmed. */
export function captureTranscript(v4Restore: string, v6Restore: string | null): string {
  const parts = ["iptables-save", "ip6tables-save", v4Restore.trim()];
  if (v6Restore !== null) parts.push(v6Restore.trim());
  parts.push("iptables-save");
  if (v6Restore !== null) parts.push("ip6tables-save");
  return parts.join("\n").trim();
}

/** The cni/ comparison: table name → block text, save lines dropped (README, "cni"). */
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
