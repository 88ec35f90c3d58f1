// The decision's budget on the largest pods the API server accepts (issue 27): any tenant can
// create a pod that looks injected, and the function decides it on its single event loop, so the
// work must be linear in the pod's size and what it logs or records must be bounded.
//
// The time check is a ratio to a floor measured in the same run on the same input (JSON.parse
// of the pod's text, which any event costs anyway): it holds on a slow or busy machine, and a
// quadratic step over a 256 KiB annotation is a thousand times over it.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MAX_QUOTED_VALUE } from "../../contract/capture-config.ts";
import { ANNOTATION } from "../../functions/capture-from-pod.ts";
import { decide } from "../../functions/decision.ts";
import { parsePod, type Pod } from "../../functions/pod.ts";
import { parsePolicy } from "../../functions/policy.ts";
import { largestPod, MAX_ANNOTATIONS_BYTES } from "../support/large-objects.ts";

/** How many times the floor a decision may cost: measured 0.2–16× after the fix, 985× before it. */
const BUDGET_RATIO = 100;

function medianMs(runs: number, work: () => unknown): number {
  work(); // warm: the first run compiles
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    work();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] ?? 0;
}

const policy = parsePolicy("mode: enforce\n");

function decideBudget(name: string, pod: object): void {
  const text = JSON.stringify(pod);
  const parsed: Pod = parsePod(JSON.parse(text));
  const floor = medianMs(7, () => JSON.parse(text));
  const spent = medianMs(7, () => decide({ pod: parsed, policy }));
  const decision = decide({ pod: parsed, policy });
  if (process.env.BUDGET_VERBOSE !== undefined) console.log(`${name}: ${(spent / floor).toFixed(1)}× (${spent.toFixed(2)} / ${floor.toFixed(2)} ms)`);
  const detail = "detail" in decision ? (decision.detail ?? "") : "";
  assert.ok(
    spent <= BUDGET_RATIO * Math.max(floor, 0.05),
    `${name}: the decision took ${spent.toFixed(2)} ms, ${(spent / floor).toFixed(1)}× parsing the pod (${floor.toFixed(2)} ms, ${text.length} bytes); budget ${BUDGET_RATIO}×`,
  );
  assert.ok(detail.length <= 16 * (MAX_QUOTED_VALUE + 200), `${name}: the decision's message is ${detail.length} characters`);
}

describe("budget: deciding the largest pods", () => {
  // One list annotation of 256 KiB of distinct ports: 40,000 items.
  const distinctPorts = Array.from({ length: 60_000 }, (_, i) => String(1 + (i % 65535)))
    .join(",")
    .slice(0, MAX_ANNOTATIONS_BYTES - 1024)
    .replace(/,[^,]*$/, "");

  for (const key of [
    ANNOTATION.excludeInboundPorts,
    ANNOTATION.includeInboundPorts,
    ANNOTATION.excludeOutboundPorts,
    ANNOTATION.excludeOutboundIPRanges,
    ANNOTATION.excludeInterfaces,
  ]) {
    test(`${key} of 256 KiB is refused in time linear in its size, with a bounded message`, () => {
      decideBudget(key, largestPod({ annotations: { [key]: distinctPorts } }));
      const decision = decide({ pod: parsePod(largestPod({ annotations: { [key]: distinctPorts } })), policy });
      assert.ok(decision.action === "error", decision.action);
      assert.match(decision.detail, /characters\)/, "the value is quoted cut, with its length");
    });
  }

  test("a 1.5 MiB pod (most containers, long env) with every list annotation at its largest", () => {
    const annotations: Record<string, string> = {};
    const share = Math.floor((MAX_ANNOTATIONS_BYTES - 4096) / 8);
    for (const key of [ANNOTATION.excludeInboundPorts, ANNOTATION.includeInboundPorts, ANNOTATION.excludeOutboundPorts, ANNOTATION.includeOutboundPorts]) {
      annotations[key] = distinctPorts.slice(0, share).replace(/,[^,]*$/, "");
    }
    decideBudget("every annotation", largestPod({ annotations, fill: "containers" }));
    decideBudget("long env", largestPod({ annotations: {}, fill: "env" }));
  });

  test("many invalid items: the message names a few and counts the rest", () => {
    const bad = Array.from({ length: 200 }, (_, i) => `x${i}`).join(",");
    const decision = decide({ pod: parsePod(largestPod({ annotations: { [ANNOTATION.excludeInboundPorts]: bad }, fill: "none" })), policy });
    assert.ok(decision.action === "error", decision.action);
    const detail = decision.detail;
    assert.match(detail, /and \d+ more$/);
    assert.ok(detail.length < 4096, `${detail.length} characters`);
  });
});
