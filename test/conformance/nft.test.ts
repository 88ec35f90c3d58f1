// Istio conformance, nft/: capture config → native nftables transaction, byte for byte.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseCaptureConfig } from "../../contract/capture-config.ts";
import { BACKEND } from "../../node-runner/backends.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { loadConfigCases, missingConformanceReason } from "./load.ts";

const missing = missingConformanceReason();

describe("istio conformance: nft (native nftables)", () => {
  if (missing !== undefined) {
    test("nft suite", skipUnlessCI(missing), () => {
      assertAvailable(missing);
    });
    return;
  }
  for (const c of loadConfigCases("nft")) {
    test(c.name, () => {
      assert.equal(BACKEND.nftables.render(parseCaptureConfig(c.config)).text.both?.trim(), c.golden.trim());
    });
  }
});
