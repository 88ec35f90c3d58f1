// Istio conformance, cni/: Pod → capture config (as istio-cni derives it) → IPv4 rules,
// compared table by table as the upstream test does.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { captureConfigFromPod } from "../support/capture.ts";
import { parsePod } from "../../functions/pod.ts";
import { renderIptables } from "../../node-runner/rules/iptables.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { blocksByTable, loadPodCases, missingConformanceReason } from "./load.ts";

const missing = missingConformanceReason();

describe("istio conformance: cni (pod-derived)", () => {
  if (missing !== undefined) {
    test("cni suite", skipUnlessCI(missing), () => {
      assertAvailable(missing);
    });
    return;
  }
  for (const c of loadPodCases()) {
    test(c.name, () => {
      const plan = renderIptables(captureConfigFromPod(parsePod(c.pod)));
      assert.equal(plan.v6, null, "the conformance pods are IPv4-only");
      const want = blocksByTable(c.golden);
      assert.ok(want.size > 0, "golden has no table blocks");
      assert.deepEqual(blocksByTable(plan.v4.restore), want);
    });
  }
});
