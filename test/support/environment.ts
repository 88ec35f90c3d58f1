// How tests decide whether they can run here. Outside CI a test whose prerequisites are
// missing skips with a one-line reason; under CI (CI=true) nothing may skip, so the same test
// runs and fails with that reason.
import assert from "node:assert/strict";

export const inCI = process.env.CI === "true";

/**
 * Options for `test()`: skip with `reason` when it is set, except in CI. In CI the test runs
 * and must call `assertAvailable(reason)` first, which fails it.
 */
export function skipUnlessCI(reason: string | undefined): { skip?: string } {
  return reason === undefined || inCI ? {} : { skip: reason };
}

export function assertAvailable(reason: string | undefined): void {
  if (reason !== undefined) assert.fail(`cannot run (and CI allows no skips): ${reason}`);
}
