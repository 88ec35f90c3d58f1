import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import type { TokenReviewer } from "../lib/token-review.ts";
import { knativeSenderIdentity, MAX_PENDING_REVIEWS, SenderAuthenticator } from "./sender-auth.ts";

const SENDER = knativeSenderIdentity("podnet-system", "podnet-pods", "ApiServerSource");

const NOW_MS = 1_000_000_000;

function authenticator(review: TokenReviewer, now = () => NOW_MS) {
  return new SenderAuthenticator({ audience: "aud", allowed: new Set([SENDER]), review, now });
}

/** A JWT-shaped token (unsigned: the TokenReview seam decides) with these claims. */
function jwt(claims: { sub?: string; aud?: string | string[]; exp?: number; jti?: string } = {}): string {
  const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "RS256" })}.${part({ sub: SENDER, aud: ["aud"], exp: NOW_MS / 1000 + 3600, ...claims })}.c2ln`;
}

describe("sender authentication (Knative OIDC identity)", () => {
  test("Knative's OIDC ServiceAccount names", () => {
    assert.equal(SENDER, "system:serviceaccount:podnet-system:podnet-pods-oidc-sources.knative.dev-apiserversource");
    assert.equal(knativeSenderIdentity("x", "tick", "PingSource"), "system:serviceaccount:x:tick-oidc-sources.knative.dev-pingsource");
    // eventing's auth.GetOIDCServiceAccountNameForResource for a Trigger (the Broker filter's sender).
    assert.equal(knativeSenderIdentity("x", "podnet-pod-events", "Trigger"), "system:serviceaccount:x:podnet-pod-events-oidc-eventing.knative.dev-trigger");
  });

  test("an allowed sender's token is reviewed once and then served from the cache", async () => {
    let reviews = 0;
    const auth = authenticator((_token, audience) => {
      reviews++;
      assert.equal(audience, "aud");
      return Promise.resolve({ authenticated: true, user: { username: SENDER } });
    });
    const token = jwt();
    for (let i = 0; i < 3; i++) assert.deepEqual(await auth.authenticate(`Bearer ${token}`), { ok: true, sender: SENDER });
    assert.equal(reviews, 1);
  });

  test("other senders, invalid tokens and a missing header are refused with their reason", async () => {
    const good = jwt({ jti: "good" });
    const auth = authenticator((token) =>
      Promise.resolve(token === good ? { authenticated: true, user: { username: "system:serviceaccount:shop:app" } } : { authenticated: false, error: "bad" }),
    );
    assert.equal((await auth.authenticate(`Bearer ${good}`)).ok, false);
    assert.deepEqual(await auth.authenticate(`Bearer ${good}`), {
      ok: false,
      reason: "sender-not-allowed",
      detail: "system:serviceaccount:shop:app is not an allowed sender",
    });
    assert.deepEqual(await auth.authenticate(`Bearer ${jwt({ jti: "nope" })}`), {
      ok: false,
      reason: "invalid-token",
      detail: "not a valid token for audience aud: bad",
    });
    assert.deepEqual(await auth.authenticate(`Bearer ${jwt({ sub: "system:serviceaccount:shop:app" })}`), {
      ok: false,
      reason: "sender-not-allowed",
      detail: "system:serviceaccount:shop:app is not an allowed sender",
    });
    for (const header of [undefined, "", "Basic abc", "Bearer", "Bearer a b", "bearer abc"]) {
      const v = await auth.authenticate(header);
      assert.equal(!v.ok && v.reason, "missing-token", String(header));
    }
  });

  test("an unreachable API server is 'auth-unavailable' and not cached", async () => {
    let calls = 0;
    const auth = authenticator(() => {
      calls++;
      return Promise.reject(new Error("connect ECONNREFUSED"));
    });
    for (let i = 0; i < 2; i++) {
      const v = await auth.authenticate(`Bearer ${jwt()}`);
      assert.equal(!v.ok && v.reason, "auth-unavailable");
    }
    assert.equal(calls, 2);
  });

  test("property: arbitrary Authorization headers never throw and never pass without a review", async () => {
    const auth = authenticator(() => Promise.resolve({ authenticated: false }));
    await fc.assert(
      fc.asyncProperty(fc.option(fc.string({ maxLength: 200 }), { nil: undefined }), async (header) => {
        assert.equal((await auth.authenticate(header)).ok, false);
      }),
      { numRuns: 300 },
    );
  });

  test("tokens that do not claim to be an allowed sender's, for this audience and unexpired, cost no TokenReview", async () => {
    let reviews = 0;
    const auth = authenticator(() => {
      reviews++;
      return Promise.resolve({ authenticated: false });
    });
    for (const [token, reason] of [
      ["abc", "invalid-token"],
      ["a.b.c", "invalid-token"],
      [jwt({ aud: "another" }), "invalid-token"],
      [jwt({ exp: NOW_MS / 1000 - 1 }), "invalid-token"],
      [jwt({ sub: "system:serviceaccount:shop:app" }), "sender-not-allowed"],
    ] as const) {
      const v = await auth.authenticate(`Bearer ${token}`);
      assert.equal(!v.ok && v.reason, reason, token);
    }
    assert.equal(reviews, 0);
  });

  test("a flood of forged tokens: reviews are bounded, and never evict or delay an accepted sender", async () => {
    const held: (() => void)[] = [];
    const real = jwt({ jti: "real" });
    const auth = authenticator((token) =>
      token === real
        ? Promise.resolve({ authenticated: true, user: { username: SENDER } })
        : new Promise((resolve) => {
            held.push(() => {
              resolve({ authenticated: false });
            });
          }),
    );
    assert.equal((await auth.authenticate(`Bearer ${real}`)).ok, true);
    const flood = Array.from({ length: MAX_PENDING_REVIEWS + 50 }, (_, i) => auth.authenticate(`Bearer ${jwt({ jti: `forged-${i}` })}`));
    assert.equal(auth.reviewsPending, MAX_PENDING_REVIEWS);
    // The accepted sender is answered from its cache while the flood waits on the API server.
    assert.deepEqual(await auth.authenticate(`Bearer ${real}`), { ok: true, sender: SENDER });
    for (const release of held) release();
    const verdicts = await Promise.all(flood);
    assert.equal(verdicts.filter((v) => !v.ok && v.reason === "auth-unavailable").length, 50);
    assert.equal(verdicts.filter((v) => !v.ok && v.reason === "invalid-token").length, MAX_PENDING_REVIEWS);
    // A thousand more refused tokens later, the sender is still cached.
    for (let i = 0; i < 1100; i++) {
      const v = auth.authenticate(`Bearer ${jwt({ jti: `junk-${i}` })}`);
      for (const release of held.splice(0)) release();
      await v;
    }
    assert.deepEqual(await auth.authenticate(`Bearer ${real}`), { ok: true, sender: SENDER });
  });

  test("concurrent events with the same new token share one review", async () => {
    let reviews = 0;
    const auth = authenticator(async () => {
      reviews++;
      await new Promise((r) => setTimeout(r, 10));
      return { authenticated: true, user: { username: SENDER } };
    });
    const token = jwt();
    const verdicts = await Promise.all(Array.from({ length: 20 }, () => auth.authenticate(`Bearer ${token}`)));
    assert.ok(verdicts.every((v) => v.ok));
    assert.equal(reviews, 1);
  });
});
