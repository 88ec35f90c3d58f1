import assert from "node:assert/strict";
import { test } from "node:test";
import { ConcurrencyLimit } from "./concurrency.ts";

test("ConcurrencyLimit runs at most `limit` tasks at once, in arrival order, and frees a slot when a task throws", async () => {
  const limit = new ConcurrencyLimit(2);
  let running = 0;
  let peak = 0;
  const started: number[] = [];
  const task = (i: number) =>
    limit.run(async () => {
      started.push(i);
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setImmediate(r));
      running--;
      if (i === 1) throw new Error("task 1 fails");
      return i;
    });
  const results = await Promise.allSettled([0, 1, 2, 3, 4].map(task));
  assert.equal(peak, 2);
  assert.deepEqual(started, [0, 1, 2, 3, 4]);
  assert.deepEqual(
    results.map((r) => r.status),
    ["fulfilled", "rejected", "fulfilled", "fulfilled", "fulfilled"],
  );
  assert.throws(() => new ConcurrencyLimit(0), RangeError);
});

test("ConcurrencyLimit hands a finished task's slot to the first waiter: a task arriving meanwhile waits its turn", async () => {
  const limit = new ConcurrencyLimit(1);
  let running = 0;
  let peak = 0;
  const order: string[] = [];
  const task = (name: string) =>
    limit.run(async () => {
      order.push(name);
      peak = Math.max(peak, ++running);
      await new Promise((r) => setImmediate(r));
      running--;
    });
  const first = task("first");
  const waiter = task("waiter");
  assert.equal(limit.pending, 2);
  await first;
  // The slot is the waiter's now, even before it has resumed.
  const late = task("late");
  await Promise.all([waiter, late]);
  assert.equal(peak, 1);
  assert.deepEqual(order, ["first", "waiter", "late"]);
  assert.equal(limit.pending, 0);
  assert.equal(limit.idle, true);
});
