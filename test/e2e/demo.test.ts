// The README's quickstart command runs the demo (after scripts/setup.sh): it must end with exit 0
// and show each pod's decision, with nothing left behind (the demo cleans up on exit).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { missingBinariesReason } from "../controlplane/harness.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { testPodsUnavailableReason } from "../support/test-pods.ts";

const missing = missingBinariesReason() ?? testPodsUnavailableReason();

test("npm run demo's program runs to its end: every kind of pod decided, shown and cleaned up [needs root and control plane]", skipUnlessCI(missing), () => {
  assertAvailable(missing);
  const root = path.resolve(import.meta.dirname, "../..");
  const r = spawnSync(process.execPath, ["--import", "tsx", path.join(root, "test/e2e/demo.ts")], { cwd: root, encoding: "utf8", timeout: 300_000 });
  const output = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, output.slice(-3000));
  for (const shown of [
    "decision: apply",
    "decision: skip (not-sidecar-injected)",
    "decision: skip (host-network)",
    "decision: error (invalid-capture)",
    "done in",
  ]) {
    assert.ok(output.includes(shown), `${shown}\n${output.slice(-3000)}`);
  }
  assert.doesNotMatch(output, /PRESENT \(unexpected!\)/);
});
