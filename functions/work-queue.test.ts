import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { WorkQueue, type ProcessOutcome } from "./work-queue.ts";

const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("the work queue (client-go's semantics)", () => {
  test("a key is queued once: items added while one is processed coalesce, only the newest runs next", async () => {
    const ran: string[] = [];
    let release: (() => void) | undefined;
    const q = new WorkQueue<string>({
      maxKeys: 10,
      retryDelaysMs: [],
      process: async (item) => {
        ran.push(item);
        if (item === "first") await new Promise<void>((r) => (release = r));
        return { done: true };
      },
    });
    assert.equal(q.add("pod-a", "first"), "queued");
    assert.equal(q.add("pod-a", "second"), "coalesced");
    assert.equal(q.add("pod-a", "third"), "coalesced");
    release?.();
    await q.whenIdle();
    assert.deepEqual(ran, ["first", "third"]);
    assert.equal(q.size, 0);
  });

  test("bounded in keys: past the bound nothing is queued; a held key still coalesces; the size is reported as it changes", async () => {
    const sizes: number[] = [];
    const q = new WorkQueue<string>({
      maxKeys: 2,
      retryDelaysMs: [],
      process: () => tick(20).then(() => ({ done: true })),
      onSize: (n) => sizes.push(n),
    });
    assert.equal(q.add("a", "1"), "queued");
    assert.equal(q.add("b", "1"), "queued");
    assert.equal(q.add("c", "1"), "full");
    assert.equal(q.add("a", "2"), "coalesced");
    assert.equal(q.size, 2);
    await q.whenIdle();
    assert.equal(q.size, 0);
    assert.deepEqual(sizes, [1, 2, 1, 0], "up as keys come, down to 0 as they are done");
  });

  test("retried with backoff (a Retry-After over the delay honoured, capped), forgotten on success", async () => {
    const at: number[] = [];
    const outcomes: ProcessOutcome[] = [{ done: false }, { done: false, retryAfterMs: 60 }, { done: false, retryAfterMs: 60_000 }, { done: true }];
    const retries: number[] = [];
    const q = new WorkQueue<string>({
      maxKeys: 10,
      retryDelaysMs: [10, 10, 10, 10],
      maxRetryAfterMs: 30,
      process: (_item, retry) => {
        retries.push(retry);
        at.push(performance.now());
        return Promise.resolve(outcomes.shift() ?? { done: true });
      },
    });
    q.add("a", "x");
    await q.whenIdle().catch(() => undefined);
    for (let i = 0; i < 100 && retries.length < 4; i++) await tick();
    assert.deepEqual(retries, [0, 1, 2, 3]);
    const gaps = at.slice(1).map((t, i) => t - (at[i] ?? 0));
    assert.ok((gaps[1] ?? 0) >= 25, `the node's Retry-After, capped at 30 ms: ${gaps.join(", ")}`);
    assert.ok((gaps[2] ?? 0) < 1000, "a long Retry-After is capped");
  });

  test("retries spent: the key is given up and forgotten; a new item for it later starts afresh", async () => {
    const given: number[] = [];
    let runs = 0;
    const q = new WorkQueue<string>({
      maxKeys: 10,
      retryDelaysMs: [1, 1],
      process: () => {
        runs++;
        return Promise.resolve({ done: false });
      },
      onGiveUp: (_item, failures) => given.push(failures),
    });
    q.add("a", "x");
    for (let i = 0; i < 100 && given.length === 0; i++) await tick();
    assert.deepEqual([runs, given, q.size], [3, [3], 0]);
    q.add("a", "y");
    for (let i = 0; i < 100 && given.length === 1; i++) await tick();
    assert.equal(runs, 6);
  });

  test("a new item for a key backing off runs at once; a processor that throws counts as a failure", async () => {
    const ran: string[] = [];
    const q = new WorkQueue<string>({
      maxKeys: 10,
      retryDelaysMs: [60_000],
      process: (item) => {
        ran.push(item);
        if (item === "boom") throw new Error("boom");
        return Promise.resolve({ done: true });
      },
    });
    q.add("a", "boom");
    await tick();
    assert.equal(q.size, 1, "backing off for a minute");
    q.add("a", "news");
    await q.whenIdle();
    assert.deepEqual(ran, ["boom", "news"]);
  });

  test("whenIdle gives up keys backing off (the resync has them) and waits for those in flight", async () => {
    const given: string[] = [];
    const q = new WorkQueue<string>({
      maxKeys: 10,
      retryDelaysMs: [60_000],
      process: (item) => (item === "slow" ? tick(30).then(() => ({ done: true })) : Promise.resolve({ done: false })),
      onGiveUp: (item) => given.push(item),
    });
    q.add("a", "failing");
    q.add("b", "slow");
    await tick();
    await q.whenIdle();
    assert.deepEqual([given, q.size], [["failing"], 0]);
  });
});
