import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { describe, test } from "node:test";
import fc from "fast-check";
import { Counter, Registry } from "prom-client";
import { createMetricsServer, ScrapeAuthorizer } from "./metrics-server.ts";
import type { AccessReviewer, TokenReviewer } from "./token-review.ts";

const reviewers = (calls: { token: number; access: number }): { token: TokenReviewer; access: AccessReviewer } => ({
  token: (token) => {
    calls.token++;
    if (token === "down") return Promise.reject(new Error("connect ECONNREFUSED"));
    return Promise.resolve(token.startsWith("user-") ? { authenticated: true, user: { username: token.slice(5), groups: ["g"] } } : { authenticated: false });
  },
  access: (user, verb, path) => {
    calls.access++;
    assert.equal(verb, "get");
    assert.equal(path, "/metrics");
    return Promise.resolve({ allowed: user.username === "prometheus" });
  },
});

describe("metrics scrapes: who may read them", () => {
  test("a token the API server accepts, of a user allowed to get /metrics; each verdict asked once", async () => {
    const calls = { token: 0, access: 0 };
    const auth = new ScrapeAuthorizer(reviewers(calls));
    for (let i = 0; i < 3; i++) assert.deepEqual(await auth.authorize("Bearer user-prometheus"), { ok: true, user: "prometheus" });
    assert.equal((await auth.authorize("Bearer user-tenant")).ok, false);
    assert.deepEqual(await auth.authorize("Bearer user-tenant"), { ok: false, status: 403, reason: "tenant may not get /metrics" });
    assert.deepEqual(await auth.authorize("Bearer junk"), { ok: false, status: 401, reason: "the token is not valid" });
    assert.deepEqual(await auth.authorize(undefined), { ok: false, status: 401, reason: "a bearer token is required" });
    assert.deepEqual(calls, { token: 3, access: 2 });
  });

  test("an API server that cannot be asked is 503 and is asked again next time", async () => {
    const calls = { token: 0, access: 0 };
    const auth = new ScrapeAuthorizer(reviewers(calls));
    for (let i = 0; i < 2; i++)
      assert.deepEqual(await auth.authorize("Bearer down"), { ok: false, status: 503, reason: "cannot review the token now: connect ECONNREFUSED" });
    assert.equal(calls.token, 2);
  });

  test("property: any Authorization header is answered with a verdict, never a throw", async () => {
    const auth = new ScrapeAuthorizer(reviewers({ token: 0, access: 0 }));
    await fc.assert(
      fc.asyncProperty(fc.option(fc.string({ maxLength: 300 }), { nil: undefined }), async (header) => {
        const verdict = await auth.authorize(header);
        assert.ok(verdict.ok || [401, 403, 503].includes(verdict.status));
      }),
      { numRuns: 300 },
    );
  });

  test("the server answers GET /metrics, and 404 or 405 for anything else", async () => {
    const registry = new Registry();
    new Counter({ name: "test_total", help: "t", registers: [registry] }).inc();
    const server = createMetricsServer({ registry, authorizer: new ScrapeAuthorizer(reviewers({ token: 0, access: 0 })) });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const ok = await fetch(`${base}/metrics`, { headers: { authorization: "Bearer user-prometheus" } });
      assert.equal(ok.status, 200);
      assert.match(await ok.text(), /^test_total 1$/m);
      const refused = await fetch(`${base}/metrics`);
      assert.equal(refused.status, 401);
      assert.equal(refused.headers.get("www-authenticate"), 'Bearer realm="metrics"');
      assert.equal((await fetch(`${base}/healthz`)).status, 404);
      assert.equal((await fetch(`${base}/metrics`, { method: "POST", body: "x" })).status, 405);
    } finally {
      server.close();
    }
  });
});
