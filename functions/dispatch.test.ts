// The dispatcher against a scripted HTTP peer that verifies every signature for real:
// retries with backoff, coalescing per pod, concurrency bound, connection errors, timeouts.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import type { Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import { verifyRequest } from "../contract/signature.ts";
import { freePort } from "../test/controlplane/harness.ts";
import { Dispatcher, type ApplyDecision } from "./dispatch.ts";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const keys = new Map([["fn-1", publicKey]]);

interface Seen {
  uid: string;
  reason: string;
  verified: boolean;
}

describe("dispatcher", () => {
  let server: http.Server;
  let port: number;
  const seen: Seen[] = [];
  let script: (s: Seen) => { status: number; delayMs?: number; retryAfter?: string; body?: string } = () => ({ status: 200 });
  let concurrent = 0;
  let maxConcurrent = 0;

  before(async () => {
    port = await freePort();
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        const verified = verifyRequest(
          { method: req.method ?? "", authority: req.headers.host ?? "", path: req.url ?? "", headers: req.headers },
          body,
          keys,
          Date.now(),
        ).ok;
        const parsed = JSON.parse(body.toString()) as { pod: { uid: string }; decision: { reason: string } };
        const s = { uid: parsed.pod.uid, reason: parsed.decision.reason, verified };
        seen.push(s);
        const answer = script(s);
        const counted = s.uid.startsWith("g");
        if (counted) concurrent++;
        maxConcurrent = Math.max(maxConcurrent, concurrent);
        setTimeout(() => {
          if (counted) concurrent--;
          if (answer.retryAfter !== undefined) res.setHeader("retry-after", answer.retryAfter);
          res
            .writeHead(answer.status, { "content-type": "application/json" })
            .end(
              answer.body ??
                JSON.stringify(
                  answer.status === 200
                    ? { result: "applied", netns: "4026532000", rules: "sha256:0", durationMs: 1 }
                    : { error: "scripted", reason: `scripted-${answer.status}` },
                ),
            );
        }, answer.delayMs ?? 0);
      });
    });
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  });
  after(() => {
    server.close();
  });

  const decision = (uid: string, reason: "needs-rules" | "waiter-still-waiting" = "needs-rules"): ApplyDecision => ({
    action: "apply",
    reason,
    node: "node-a",
    hostIP: "127.0.0.1",
    pod: { namespace: "shop", name: uid, uid, ips: ["10.0.0.2"] },
    capture: {} as ApplyDecision["capture"],
    warnings: [],
  });
  const dispatcher = (options: Partial<ConstructorParameters<typeof Dispatcher>[0]> = {}) =>
    new Dispatcher({ signingKey: () => ({ keyid: "fn-1", privateKey }), port, ...options });

  test("signed requests verify at the peer", async () => {
    seen.length = 0;
    script = () => ({ status: 200 });
    const d = dispatcher();
    assert.deepEqual(await d.send(decision("a"), "p1"), { ok: true, status: 200, result: "applied" });
    assert.equal(seen[0]?.verified, true);
    d.close();
  });

  test("one attempt each: 503 (with its Retry-After) and connection errors can pass; 4xx cannot", async () => {
    script = () => ({ status: 503, retryAfter: "1" });
    const d = dispatcher();
    const busy = await d.send(decision("b"), "p1");
    assert.deepEqual(busy.ok ? null : [busy.status, busy.retryable, busy.retryAfterMs], [503, true, 1000]);
    script = () => ({ status: 409 });
    const refused = await d.send(decision("c"), "p1");
    assert.deepEqual(refused.ok ? null : [refused.status, refused.retryable], [409, false]);
    const nobody = dispatcher({ port: await freePort() });
    const down = await nobody.send(decision("d"), "p1");
    assert.deepEqual(down.ok ? null : [down.reason, down.retryable], ["ECONNREFUSED", true]);
    d.close();
    nobody.close();
  });

  test("a 200 that is not the contract's answer is a failure (bad-response), never taken as applied", async () => {
    const d = dispatcher();
    for (const body of ["", "not json", "{}", '{"result":"applied"}', '{"result":"pwned","durationMs":1}', "[]"]) {
      script = () => ({ status: 200, body });
      const r = await d.send(decision(`bad-${body.length}`), "p1");
      assert.deepEqual(r.ok ? null : [r.reason, r.retryable], ["bad-response", false], body);
    }
    d.close();
  });

  test("a slow peer times out (retryable)", async () => {
    script = () => ({ status: 200, delayMs: 500 });
    const d = dispatcher({ timeoutMs: 100 });
    const r = await d.send(decision("e"), "p1");
    assert.deepEqual(r.ok ? null : [r.reason, r.retryable], ["timeout", true]);
    d.close();
  });

  test("the concurrency bound holds across pods (pods g*)", async () => {
    maxConcurrent = 0;
    script = () => ({ status: 200, delayMs: 30 });
    const d = dispatcher({ maxConcurrent: 3 });
    await Promise.all(Array.from({ length: 12 }, (_, i) => d.send(decision(`g${i}`), "p1")));
    assert.equal(maxConcurrent, 3);
    d.close();
  });

  test("at most maxPerNode requests in flight to one node; other nodes are not held back (pods g*)", async () => {
    maxConcurrent = 0;
    script = () => ({ status: 200, delayMs: 30 });
    const d = dispatcher({ maxConcurrent: 10, maxPerNode: 2 });
    await Promise.all(Array.from({ length: 12 }, (_, i) => d.send(decision(`g${i}`), "p1")));
    assert.equal(maxConcurrent, 2, "one node");
    maxConcurrent = 0;
    await Promise.all(Array.from({ length: 12 }, (_, i) => d.send({ ...decision(`g${i}`), node: `node-${i % 3}` }, "p1")));
    assert.equal(maxConcurrent, 6, "three nodes, two each");
    d.close();
  });

  test("a connection idle for idleConnectionMs is closed; one in use is kept for the next request; a slow answer still arrives", async () => {
    script = () => ({ status: 200 });
    let opened = 0;
    let closed = 0;
    const onConnection = (socket: Socket): void => {
      opened++;
      socket.once("close", () => closed++);
    };
    server.on("connection", onConnection);
    try {
      const d = dispatcher({ idleConnectionMs: 200 });
      await d.send(decision("i1"), "p1");
      await d.send(decision("i2"), "p1");
      assert.deepEqual([opened, closed], [1, 0], "back to back: the same connection");
      await new Promise((r) => setTimeout(r, 600));
      assert.deepEqual([opened, closed], [1, 1], "idle: closed by the function");
      // The idle bound is not a request's deadline: an answer slower than it still arrives.
      script = () => ({ status: 200, delayMs: 500 });
      assert.deepEqual(await d.send(decision("i3"), "p1"), { ok: true, status: 200, result: "applied" });
      d.close();
    } finally {
      server.off("connection", onConnection);
    }
  });

  test("no signing key: a retryable failure, not a crash", async () => {
    const d = new Dispatcher({
      signingKey: () => {
        throw new Error("no signing key loaded");
      },
      port,
    });
    const r = await d.send(decision("h"), "p1");
    assert.deepEqual(r.ok ? null : [r.reason, r.retryable], ["no signing key loaded", true]);
    d.close();
  });
});
