// The parts of docs/ that are generated from the code, so that they cannot drift from it: the
// node-runner's status table (contract/refusals.ts). `node --import tsx scripts/generate-docs.ts`
// rewrites them; scripts/generate-docs.test.ts fails when they are stale.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { refusalTableMarkdown } from "../contract/refusals.ts";

export const REFERENCE_FILE = path.join(import.meta.dirname, "..", "docs", "reference.md");
const BEGIN = "<!-- generated from contract/refusals.ts by scripts/generate-docs.ts: do not edit -->";
const END = "<!-- end of generated table -->";

/** `text` with the block between the markers replaced by the current table. */
export function withGeneratedTables(text: string): string {
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (begin < 0 || end < begin) throw new Error(`docs/reference.md lacks the markers ${BEGIN} … ${END}`);
  return `${text.slice(0, begin + BEGIN.length)}\n${refusalTableMarkdown()}\n${text.slice(end)}`;
}

if (process.argv[1] === import.meta.filename) writeFileSync(REFERENCE_FILE, withGeneratedTables(readFileSync(REFERENCE_FILE, "utf8")));
