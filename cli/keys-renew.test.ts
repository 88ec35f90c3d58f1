import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import fc from "fast-check";
import { applyStep, bundleCertificates, NEXT, parseDuration, planRenewal, type RenewalTiming, type StoredTls } from "./keys-renew.ts";
import { generateTls, tlsSecretData } from "./tls.ts";

// Pure; the command against a real API server, with the node-runner and the function following
// their mounts through a whole rotation: test/node-runner/tls-rotation.test.ts.
// The installed certificate expires in 20 days; the rotation's new one, as pnc keys makes it, in 825.
const first = generateTls({ days: 20 });
const second = generateTls();
const notAfter = Date.parse(new X509Certificate(first.cert).validTo);
const DAY = 86_400_000;
const timing = (now: number): RenewalTiming => ({ now, renewBeforeMs: 30 * DAY, stepAfterMs: 10 * 60_000 });
const installed: StoredTls = { secret: tlsSecretData(first), trusted: first.ca };

/** Run steps from `stored` at the times given, each step applied as the edge applies it. */
function run(stored: StoredTls, times: readonly number[]): { kinds: string[]; stored: StoredTls } {
  const kinds: string[] = [];
  for (const now of times) {
    const step = planRenewal(stored, timing(now));
    kinds.push(step.kind);
    const change = applyStep(step, stored, () => second);
    if (change !== undefined) stored = { secret: change.secret ?? stored.secret, trusted: change.trusted ?? stored.trusted, lastStepAt: now };
  }
  return { kinds, stored };
}

test("nothing to do while the certificate is valid beyond the renewal window; the detail says when it starts", () => {
  const step = planRenewal(installed, timing(notAfter - 31 * DAY));
  assert.equal(planRenewal({ secret: tlsSecretData(second), trusted: second.ca }, timing(Date.now())).kind, "none");
  assert.equal(step.kind, "none");
  assert.match(step.detail, /its renewal starts from/);
});

test("a rotation: the new CA trusted first, then the new certificate served, then the old CA dropped; each step waits for the mounts", () => {
  const start = Date.now();
  const minute = 60_000;
  const { kinds, stored } = run(installed, [start, start + minute, start + 11 * minute, start + 12 * minute, start + 22 * minute, start + 23 * minute]);
  assert.deepEqual(kinds, ["start", "wait", "swap", "wait", "prune", "none"]);
  assert.equal(stored.secret["tls.crt"], second.cert);
  assert.equal(stored.secret["ca.crt"], second.ca);
  assert.deepEqual(bundleCertificates(stored.trusted), bundleCertificates(second.ca));
  for (const key of Object.values(NEXT)) assert.equal(stored.secret[key], undefined, `${key} gone`);
});

test("at every moment of a rotation the CA ConfigMap trusts the certificate served, and the one about to be", () => {
  const start = Date.now();
  let stored = installed;
  for (let i = 0; i < 8; i++) {
    const now = start + i * 11 * 60_000;
    const step = planRenewal(stored, timing(now));
    const change = applyStep(step, stored, () => second);
    if (change === undefined) continue;
    // Trust is written before the Secret: check both orders of a half-applied step.
    const trustedFirst: StoredTls = { ...stored, trusted: change.trusted ?? stored.trusted };
    for (const state of [trustedFirst, { secret: change.secret ?? stored.secret, trusted: change.trusted ?? stored.trusted }]) {
      const served = bundleCertificates(state.secret["ca.crt"] ?? "")[0] ?? "";
      if (change.trusted !== undefined || state === trustedFirst)
        assert.ok(bundleCertificates(state.trusted).includes(served), `${step.kind}: the served certificate's CA is trusted`);
    }
    stored = { secret: change.secret ?? stored.secret, trusted: change.trusted ?? stored.trusted, lastStepAt: now };
  }
});

test("repairs: a CA ConfigMap without the served certificate's CA gets it at once; a rotation whose new CA was dropped trusts it again", () => {
  const lost: StoredTls = { ...installed, trusted: second.ca, lastStepAt: notAfter - 60 * DAY };
  assert.equal(planRenewal(lost, timing(notAfter - 60 * DAY + 1000)).kind, "prune");
  const midway: StoredTls = { secret: { ...tlsSecretData(first), [NEXT.cert]: second.cert, [NEXT.key]: second.key, [NEXT.ca]: second.ca }, trusted: first.ca };
  assert.equal(planRenewal(midway, timing(notAfter - 20 * DAY)).kind, "start");
  const change = applyStep(planRenewal(midway, timing(notAfter - 20 * DAY)), midway, () => assert.fail("the next certificate is kept, not made again"));
  assert.deepEqual(bundleCertificates(change?.trusted ?? ""), [...bundleCertificates(first.ca), ...bundleCertificates(second.ca)]);
});

test("an expired certificate is rotated the same way", () => {
  assert.equal(planRenewal(installed, timing(notAfter + DAY)).kind, "start");
});

test("objects pnc keys did not make are refused, saying what is missing", () => {
  assert.throws(() => planRenewal({ secret: { "tls.key": first.key }, trusted: first.ca }, timing(0)), /lacks tls.crt or ca.crt/);
});

test("durations: d, h, m, s; anything else is refused", () => {
  assert.deepEqual(["30d", "12h", "10m", "0s"].map(parseDuration), [30 * DAY, 12 * 3_600_000, 600_000, 0]);
  fc.assert(
    fc.property(fc.string(), (text) => {
      try {
        const ms = parseDuration(text);
        assert.ok(/^\d{1,6}[dhms]$/.test(text) && Number.isSafeInteger(ms));
      } catch (err) {
        assert.match(String(err), /not a duration/);
      }
    }),
  );
});
