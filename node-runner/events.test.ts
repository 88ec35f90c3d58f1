// The node-runner's Event queue on a test clock: Events wait for the work and a quiet moment,
// never longer than their deadline, a few at a time, a bounded number; shutdown sends the rest.
import assert from "node:assert/strict";
import { test } from "node:test";
import { EventQueue, type Clock } from "./events.ts";

/** A clock that moves only when told, running what falls due on the way. */
class TestClock implements Clock {
  private time = 0;
  private readonly timers: { at: number; fn: () => void; cancelled: boolean }[] = [];
  now(): number {
    return this.time;
  }
  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.time + ms, fn, cancelled: false };
    this.timers.push(timer);
    return () => {
      timer.cancelled = true;
    };
  }
  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      const due = this.timers.filter((t) => !t.cancelled && t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (due === undefined) break;
      this.timers.splice(this.timers.indexOf(due), 1);
      this.time = due.at;
      due.fn();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

interface Harness {
  readonly clock: TestClock;
  readonly queue: EventQueue<string>;
  /** Events whose send has started, in order. */
  readonly started: string[];
  /** Ends the sends started so far (or the first `n`). */
  finish(n?: number): Promise<void>;
  readonly pendingSeen: number[];
}

function harness(options: { atOnce?: number; maxWaiting?: number; quietMs?: number; maxDelayMs?: number; failing?: boolean } = {}): Harness {
  const clock = new TestClock();
  const started: string[] = [];
  const open: (() => void)[] = [];
  const pendingSeen: number[] = [];
  const queue = new EventQueue<string>({
    atOnce: options.atOnce ?? 2,
    maxWaiting: options.maxWaiting ?? 100,
    quietMs: options.quietMs ?? 250,
    maxDelayMs: options.maxDelayMs ?? 5000,
    clock,
    onPending: (n) => pendingSeen.push(n),
    send: (item) =>
      new Promise<void>((resolve, reject) => {
        started.push(item);
        open.push(
          options.failing === true
            ? () => {
                reject(new Error("API server says no"));
              }
            : resolve,
        );
      }),
  });
  return {
    clock,
    queue,
    started,
    pendingSeen,
    finish: async (n = open.length) => {
      for (const end of open.splice(0, n)) end();
      await settle();
    },
  };
}

/** Pod work that runs until `end` is called. */
function work(queue: EventQueue<string>): { end: () => Promise<void>; done: Promise<string> } {
  let end!: () => void;
  const done = queue.during(
    () =>
      new Promise<string>((resolve) => {
        end = () => {
          resolve("programmed");
        };
      }),
  );
  return {
    end: async () => {
      end();
      await done;
      await settle();
    },
    done,
  };
}

test("with no work at all, an Event is sent at once", async () => {
  const h = harness();
  h.queue.add("a");
  await settle();
  assert.deepEqual(h.started, ["a"]);
});

test("Events added during work wait for it to end and then for the quiet time, then go at most atOnce at a time, in order", async () => {
  const h = harness({ atOnce: 2, quietMs: 250 });
  const w = work(h.queue);
  for (const e of ["a", "b", "c", "d", "e"]) h.queue.add(e);
  await h.clock.advance(1000);
  assert.deepEqual(h.started, [], "held while the work runs");
  await w.end();
  assert.equal(await w.done, "programmed", "the work's own result is untouched");
  await h.clock.advance(249);
  assert.deepEqual(h.started, [], "held for the quiet time after the work");
  await h.clock.advance(1);
  assert.deepEqual(h.started, ["a", "b"]);
  await h.finish(1);
  assert.deepEqual(h.started, ["a", "b", "c"], "a finished send makes room for the next");
  await h.finish();
  await h.finish();
  assert.deepEqual(h.started, ["a", "b", "c", "d", "e"]);
  await h.finish();
  assert.equal(h.queue.pending, 0);
  assert.equal(h.pendingSeen.at(-1), 0);
});

test("work that starts again within the quiet time holds the Events again", async () => {
  const h = harness({ quietMs: 250, maxDelayMs: 5000 });
  const first = work(h.queue);
  h.queue.add("a");
  await first.end();
  await h.clock.advance(200);
  const second = work(h.queue);
  await h.clock.advance(1000);
  assert.deepEqual(h.started, []);
  await second.end();
  await h.clock.advance(250);
  assert.deepEqual(h.started, ["a"]);
});

test("on a node that is never quiet, an Event goes at its deadline", async () => {
  const h = harness({ quietMs: 250, maxDelayMs: 5000 });
  work(h.queue); // never ends
  h.queue.add("a");
  await h.clock.advance(3000);
  h.queue.add("b");
  await h.clock.advance(1999);
  assert.deepEqual(h.started, []);
  await h.clock.advance(1);
  assert.deepEqual(h.started, ["a"]);
  await h.clock.advance(2999);
  assert.deepEqual(h.started, ["a"]);
  await h.clock.advance(1);
  assert.deepEqual(h.started, ["a", "b"]);
});

test("no more than maxWaiting wait: one more is refused, and sending ones do not count", () => {
  const h = harness({ atOnce: 2, maxWaiting: 3 });
  for (const e of ["a", "b"]) assert.equal(h.queue.add(e), true); // sent at once, never answered
  for (const e of ["c", "d", "e"]) assert.equal(h.queue.add(e), true);
  assert.equal(h.queue.add("f"), false);
  assert.equal(h.queue.pending, 5);
  assert.deepEqual(h.started, ["a", "b"]);
});

test("a failed send is the caller's to report: the queue goes on with the next", async () => {
  const h = harness({ atOnce: 1, failing: true });
  for (const e of ["a", "b", "c"]) h.queue.add(e);
  await h.finish();
  await h.finish();
  await h.finish();
  assert.deepEqual(h.started, ["a", "b", "c"]);
  assert.equal(h.queue.pending, 0);
});

test("flush sends what waits though work runs and resolves once everything is sent", async () => {
  const h = harness({ atOnce: 2 });
  work(h.queue); // never ends
  for (const e of ["a", "b", "c"]) h.queue.add(e);
  let flushed = false;
  const flush = h.queue.flush().then(() => (flushed = true));
  await settle();
  assert.deepEqual(h.started, ["a", "b"]);
  await h.finish();
  assert.deepEqual(h.started, ["a", "b", "c"]);
  assert.equal(flushed, false);
  await h.finish();
  await flush;
  assert.equal(h.queue.pending, 0);
  assert.equal(await h.queue.flush().then(() => "again"), "again", "nothing pending: at once");
});

test("atOnce must be a positive integer", () => {
  assert.throws(() => new EventQueue({ atOnce: 0, maxWaiting: 1, quietMs: 0, maxDelayMs: 0, send: () => Promise.resolve() }), RangeError);
});
