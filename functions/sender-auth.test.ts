import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { knativeSourceIdentity, SenderAuthenticator, type TokenReviewer } from "./sender-auth.ts";

const SENDER = knativeSourceIdentity("podnet-system", "podnet-pods", "ApiServerSource");

function authenticator(review: TokenReviewer, now = () => 1_000_000) {
  return new SenderAuthenticator({ audience: "aud", allowed: new Set([SENDER]), review, now });
}

describe("sender authentication (Knative OIDC identity)", () => {
  test("Knative's OIDC ServiceAccount names", () => {
    assert.equal(SENDER, "system:serviceaccount:podnet-system:podnet-pods-oidc-sources.knative.dev-apiserversource");
    assert.equal(knativeSourceIdentity("x", "tick", "PingSource"), "system:serviceaccount:x:tick-oidc-sources.knative.dev-pingsource");
  });

  test("an allowed sender's token is reviewed once and then served from the cache", async () => {
    let reviews = 0;
    const auth = authenticator((_token, audience) => {
      reviews++;
      assert.equal(audience, "aud");
      return Promise.resolve({ authenticated: true, username: SENDER });
    });
    for (let i = 0; i < 3; i++) assert.deepEqual(await auth.authenticate("Bearer abc.def.ghi"), { ok: true, sender: SENDER });
    assert.equal(reviews, 1);
  });

  test("other senders, invalid tokens and a missing header are refused with their reason", async () => {
    const auth = authenticator((token) => Promise.resolve(token === "good" ? { authenticated: true, username: "system:serviceaccount:shop:app" } : { authenticated: false, error: "bad" }));
    assert.equal((await auth.authenticate("Bearer good")).ok, false);
    assert.deepEqual(await auth.authenticate("Bearer good"), { ok: false, reason: "sender-not-allowed", detail: "system:serviceaccount:shop:app is not an allowed sender" });
    assert.deepEqual(await auth.authenticate("Bearer nope"), { ok: false, reason: "invalid-token", detail: "not a valid token for audience aud: bad" });
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
      const v = await auth.authenticate("Bearer t");
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
});
