import assert from "node:assert/strict";
import { test } from "node:test";
import { ConcurrencyLimit } from "./concurrency.ts";

/** Tasks through one limit, each yielding once: the order they started in and the most that ran at once. */
function observed(limit: ConcurrencyLimit): { task: <T>(name: T, fail?: boolean) => Promise<T>; started: unknown[]; peak: () => number } {
  let running = 0;
  let peak = 0;
  const started: unknown[] = [];
  const task = <T>(name: T, fail = false): Promise<T> =>
    limit.run(async () => {
      started.push(name);
      peak = Math.max(peak, ++running);
      await new Promise((r) => setImmediate(r));
      running--;
      if (fail) throw new Error(`task ${String(name)} fails`);
      return name;
    });
  return { task, started, peak: () => peak };
}

test("ConcurrencyLimit runs at most `limit` tasks at once, in arrival order, and frees a slot when a task throws", async () => {
  const { task, started, peak } = observed(new ConcurrencyLimit(2));
  const results = await Promise.allSettled([0, 1, 2, 3, 4].map((i) => task(i, i === 1)));
  assert.equal(peak(), 2);
  assert.deepEqual(started, [0, 1, 2, 3, 4]);
  assert.deepEqual(
    results.map((r) => r.status),
    ["fulfilled", "rejected", "fulfilled", "fulfilled", "fulfilled"],
  );
  assert.throws(() => new ConcurrencyLimit(0), RangeError);
});

test("ConcurrencyLimit hands a finished task's slot to the first waiter: a task arriving meanwhile waits its turn", async () => {
  const limit = new ConcurrencyLimit(1);
  const { task, started, peak } = observed(limit);
  const first = task("first");
  const waiter = task("waiter");
  assert.equal(limit.pending, 2);
  await first;
  // The slot is the waiter's now, even before it has resumed.
  const late = task("late");
  await Promise.all([waiter, late]);
  assert.equal(peak(), 1);
  assert.deepEqual(started, ["first", "waiter", "late"]);
  assert.equal(limit.pending, 0);
  assert.equal(limit.idle, true);
});
