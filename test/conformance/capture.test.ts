// Istio conformance, capture/: capture config → iptables-restore input, byte for byte.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseCaptureConfig } from "../../contract/capture-config.ts";
import { BACKEND } from "../../node-runner/backends.ts";
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
  // Both iptables backends render the same rules (they differ in the tool that applies them).
  for (const backend of [BACKEND["iptables-nft"], BACKEND["iptables-legacy"]]) {
    for (const c of loadConfigCases("capture")) {
      test(`${c.name} (${backend.name})`, () => {
        const { text } = backend.render(parseCaptureConfig(c.config));
        assert.equal(captureTranscript(text.v4 ?? "", text.v6 ?? null), c.golden.trim());
      });
    }
  }
});
