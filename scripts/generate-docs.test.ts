import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { REFUSAL, REFUSAL_ROWS } from "../contract/refusals.ts";
import { REFERENCE_FILE, withGeneratedTables } from "./generate-docs.ts";

test("docs/reference.md's status table is what contract/refusals.ts says", () => {
  const text = readFileSync(REFERENCE_FILE, "utf8");
  assert.equal(text, withGeneratedTables(text), "run: node --import tsx scripts/generate-docs.ts");
});

test("each reason has one row, and only 503 carries a Retry-After", () => {
  const reasons = REFUSAL_ROWS.flatMap((row) => row.reasons);
  assert.equal(new Set(reasons).size, reasons.length);
  assert.equal(Object.keys(REFUSAL).length, reasons.length);
  for (const [reason, spec] of Object.entries(REFUSAL)) assert.equal(spec.retryAfterSeconds !== undefined, spec.status === 503, reason);
});
