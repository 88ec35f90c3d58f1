// Istio conformance, capture/: capture config → iptables-restore input, byte for byte.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseCaptureConfig } from "../../contract/capture-config.ts";
import { renderIptables } from "../../node-runner/rules/iptables.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { captureTranscript, loadConfigCases, missingConformanceReason } from "./load.ts";

const missing = missingConformanceReason();

describe("istio conformance: capture (iptables)", () => {
  if (missing !== undefined) {
    test("capture suite", skipUnlessCI(missing), () => {
      assertAvailable(missing);
    });
    return;
  }
  for (const c of loadConfigCases("capture")) {
    test(c.name, () => {
      const plan = renderIptables(parseCaptureConfig(c.config));
      assert.equal(captureTranscript(plan.v4.restore, plan.v6?.restore ?? null), c.golden.trim());
    });
  }
});
