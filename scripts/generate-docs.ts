// The parts of docs/ that are generated from the code, so that they cannot drift from it: the
// node-runner's status table (contract/refusals.ts) and the metrics of both components
// (node-runner/metrics.ts, functions/metrics.ts). `node --import tsx scripts/generate-docs.ts`
// rewrites them; scripts/generate-docs.test.ts fails when they are stale.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Registry } from "prom-client";
import { refusalTableMarkdown } from "../contract/refusals.ts";
import { createFunctionMetrics } from "../functions/metrics.ts";
import { createMetrics } from "../node-runner/metrics.ts";

export const REFERENCE_FILE = path.join(import.meta.dirname, "..", "docs", "reference.md");
const END = "<!-- end of generated table -->";

/** One metric as the table shows it. */
export interface MetricRow {
  readonly name: string;
  readonly type: string;
  readonly labels: readonly string[];
  readonly help: string;
}

/** The metrics a registry holds (Node's process metrics, added under the same prefix, left out). */
export function metricRows(registry: Registry): MetricRow[] {
  return registry.getMetricsAsArray().map((m) => {
    const { name, help, type, labelNames } = m as unknown as { name: string; help: string; type: string; labelNames?: readonly string[] };
    return { name, type, help, labels: labelNames ?? [] };
  });
}

/** Both components' own metrics, the node-runner's first. */
export function projectMetrics(): { readonly component: string; readonly rows: MetricRow[] }[] {
  return [
    { component: "node-runner", rows: metricRows(createMetrics({ defaultMetrics: false }).registry) },
    { component: "function", rows: metricRows(createFunctionMetrics({ defaultMetrics: false }).registry) },
  ];
}

function metricsTableMarkdown(): string {
  const cell = (text: string): string => text.replaceAll("|", "\\|").replaceAll("<", "&lt;");
  const rows = projectMetrics().flatMap(({ component, rows }) =>
    rows.map((r) => `| ${component} | \`${r.name}\` | ${r.type} | ${r.labels.map((l) => `\`${l}\``).join(", ") || "none"} | ${cell(r.help)} |`),
  );
  return ["| component | metric | type | labels | what |", "|---|---|---|---|---|", ...rows].join("\n");
}

const BLOCKS = [
  { begin: "<!-- generated from contract/refusals.ts by scripts/generate-docs.ts: do not edit -->", render: refusalTableMarkdown },
  { begin: "<!-- generated from node-runner/metrics.ts and functions/metrics.ts by scripts/generate-docs.ts: do not edit -->", render: metricsTableMarkdown },
];

/** `text` with each generated block (between its marker and the next end marker) replaced by its current table. */
export function withGeneratedTables(text: string): string {
  let out = text;
  for (const { begin, render } of BLOCKS) {
    const start = out.indexOf(begin);
    const end = out.indexOf(END, start);
    if (start < 0 || end < 0) throw new Error(`docs/reference.md lacks the markers ${begin} … ${END}`);
    out = `${out.slice(0, start + begin.length)}\n${render()}\n${out.slice(end)}`;
  }
  return out;
}

if (process.argv[1] === import.meta.filename) writeFileSync(REFERENCE_FILE, withGeneratedTables(readFileSync(REFERENCE_FILE, "utf8")));
