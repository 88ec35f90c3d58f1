// Hostile input at the node-runner's endpoints, in process. Nothing here reaches the pod API,
// a namespace or iptables: the guards below fail the test if anything tries.
import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import fc from "fast-check";
import { pino } from "pino";
import request from "supertest";
import { APPLY_PATH, REFUSE_PATH, SKIP_PATH } from "../contract/apply-request.ts";
import { signRequest } from "../contract/signature.ts";
import { createMetrics } from "./metrics.ts";
import { ReplayCache } from "./replay.ts";
import { createNodeRunnerApp } from "./server.ts";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const unreachable = (what: string) => (): never => assert.fail(`${what} must not be reached by hostile input`);

const deps: Parameters<typeof createNodeRunnerApp>[0] = {
  nodeName: "node-a",
  authorities: new Set(["node-a.test:9443"]),
  startedAtMs: Date.now() - 5000,
  keys: { current: new Map([["fn-1", publicKey]]) },
  replay: new ReplayCache(100_000),
  pods: {
    identify: unreachable("pod API"),
    markInitialized: unreachable("pod API"),
    markRefused: unreachable("pod API"),
    markSkipped: unreachable("pod API"),
    recordEvent: unreachable("pod API"),
  },
  resolveNetns: unreachable("netns resolution"),
  applierFor: unreachable("applier"),
  log: pino({ level: "silent" }),
  metrics: createMetrics({ defaultMetrics: false }),
};
const app = createNodeRunnerApp(deps);

describe("node-runner endpoints under hostile input", () => {
  test("property: arbitrary bodies and signature headers → 400/401/413, never a crash", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(APPLY_PATH, REFUSE_PATH, SKIP_PATH),
        fc.string({ unit: "binary", maxLength: 300 }),
        fc.record(
          { input: fc.string({ maxLength: 120 }), signature: fc.string({ maxLength: 120 }), digest: fc.string({ maxLength: 80 }) },
          { requiredKeys: [] },
        ),
        async (path, body, h) => {
          const headers: Record<string, string> = { "content-type": "application/json" };
          const printable = (v: string): string => v.replace(/[^\x20-\x7e]/g, "");
          if (h.input !== undefined) headers["signature-input"] = printable(h.input);
          if (h.signature !== undefined) headers.signature = printable(h.signature);
          if (h.digest !== undefined) headers["content-digest"] = printable(h.digest);
          const res = await request(app).post(path).set(headers).send(body);
          assert.ok([400, 401, 413].includes(res.status), `status ${res.status}: ${JSON.stringify(res.body)}`);
        },
      ),
      { numRuns: 400 },
    );
  });

  test("property: validly signed garbage is malformed (400), never a crash", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 300 }),
          fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
        ),
        async (text) => {
          const body = Buffer.from(text);
          const signature = signRequest(
            { method: "POST", authority: "node-a.test:9443", path: APPLY_PATH, contentType: "application/json", body },
            { keyid: "fn-1", privateKey },
            { now: Date.now(), nonce: randomUUID() },
          );
          const res = await request(app)
            .post(APPLY_PATH)
            .set("host", "node-a.test:9443")
            .set("content-type", "application/json")
            .set(signature)
            .send(body.toString("utf8"));
          assert.equal(res.status, 400, JSON.stringify(res.body));
          assert.equal((res.body as { reason: string }).reason, "malformed");
        },
      ),
      { numRuns: 300 },
    );
  });

  test("health endpoints (no ETag: nothing revalidates an answer)", async () => {
    const health = await request(app).get("/healthz");
    assert.equal(health.status, 200);
    assert.equal(health.headers.etag, undefined);
    assert.equal((await request(app).get("/readyz")).status, 200);
    assert.equal((await request(app).get("/metrics")).status, 404, "metrics have a port of their own (lib/metrics-server.ts)");
  });

  test("stopping: any request, signed or not, is refused unread (503 stopping, Retry-After, connection closed); not ready", async () => {
    const stopping = createNodeRunnerApp({ ...deps, stopping: () => true });
    const body = Buffer.from("{}");
    const signature = signRequest(
      { method: "POST", authority: "node-a.test:9443", path: APPLY_PATH, contentType: "application/json", body },
      { keyid: "fn-1", privateKey },
      { now: Date.now(), nonce: randomUUID() },
    );
    for (const headers of [signature, {}]) {
      const res = await request(stopping).post(APPLY_PATH).set("host", "node-a.test:9443").set("content-type", "application/json").set(headers).send("{}");
      assert.deepEqual(
        [res.status, (res.body as { reason: string }).reason, res.headers["retry-after"], res.headers.connection],
        [503, "stopping", "1", "close"],
      );
    }
    assert.equal((await request(stopping).get("/readyz")).status, 503);
  });
});
