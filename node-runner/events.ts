// The node-runner's Kubernetes Events: its report to people, never on a pod's critical path.
// Each is sent after its request's answer and once the node-runner has had no pod to program for
// `quietMs`: in a burst every Event is an API write (and an etcd write behind it) that would
// otherwise take CPU and API server time from the marks the pods wait for, and a burst has short
// gaps between its requests that a plain "no work now" would fill with Events. An Event waits at
// most `maxDelayMs` (a node that is never quiet still sends them), `atOnce` are sent at a time,
// at most `maxWaiting` wait; one more is refused (the caller counts and logs it). On shutdown
// `flush` sends what waits, quiet or not.

export interface EventQueueOptions<T> {
  /** Sends one Event; a rejection is the caller's to report (the queue only moves on). */
  readonly send: (item: T) => Promise<void>;
  readonly atOnce: number;
  readonly maxWaiting: number;
  readonly maxDelayMs: number;
  /** How long no pod work must have run before Events go. */
  readonly quietMs: number;
  /** Called whenever the number of Events being sent or waiting changes. */
  readonly onPending?: (pending: number) => void;
  readonly clock?: Clock;
}

/** Time as the queue sees it: the process's, or a test's. */
export interface Clock {
  now(): number;
  /** Calls `fn` after `ms` (without keeping the process alive); returns its cancellation. */
  after(ms: number, fn: () => void): () => void;
}

const processClock: Clock = {
  now: () => performance.now(),
  after: (ms, fn) => {
    const timer = setTimeout(fn, ms).unref();
    return () => {
      clearTimeout(timer);
    };
  },
};

export class EventQueue<T> {
  private readonly waiting: { readonly item: T; readonly since: number }[] = [];
  private sending = 0;
  private work = 0;
  private workEndedAt = Number.NEGATIVE_INFINITY;
  private flushing = false;
  private timer: { readonly cancel: () => void; readonly due: number } | undefined;
  private readonly drained: (() => void)[] = [];
  private readonly clock: Clock;

  constructor(private readonly options: EventQueueOptions<T>) {
    if (!Number.isInteger(options.atOnce) || options.atOnce < 1) throw new RangeError(`atOnce must be a positive integer, got ${options.atOnce}`);
    this.clock = options.clock ?? processClock;
  }

  /** Events being sent or waiting. */
  get pending(): number {
    return this.sending + this.waiting.length;
  }

  /** Queue an Event; false when `maxWaiting` already wait (it is not sent). */
  add(item: T): boolean {
    if (this.waiting.length >= this.options.maxWaiting) return false;
    this.waiting.push({ item, since: this.clock.now() });
    this.pump();
    return true;
  }

  /** Runs one pod's work: Events wait while any runs and `quietMs` after (up to their deadline). */
  async during<R>(task: () => Promise<R>): Promise<R> {
    this.work++;
    try {
      return await task();
    } finally {
      this.work--;
      this.workEndedAt = this.clock.now();
      this.pump();
    }
  }

  /** Sends everything waiting, work or not; resolves once nothing is pending (shutdown). */
  flush(): Promise<void> {
    this.flushing = true;
    const done = new Promise<void>((resolve) => this.drained.push(resolve));
    this.pump();
    return done;
  }

  private pump(): void {
    const now = this.clock.now();
    const quietFrom = this.work === 0 ? this.workEndedAt + this.options.quietMs : Number.POSITIVE_INFINITY;
    const dueAt = (since: number): number => (this.flushing ? now : Math.min(quietFrom, since + this.options.maxDelayMs));
    for (let next = this.waiting[0]; next !== undefined && this.sending < this.options.atOnce && dueAt(next.since) <= now; next = this.waiting[0]) {
      this.waiting.shift();
      this.sending++;
      const item = next.item;
      new Promise<void>((resolve) => {
        resolve(this.options.send(item));
      })
        .catch(() => undefined)
        .finally(() => {
          this.sending--;
          this.pump();
        });
    }
    // The oldest is held back: look again when it is due (a send that ends looks again anyway).
    const oldest = this.waiting[0];
    if (oldest !== undefined && this.sending < this.options.atOnce) {
      const due = dueAt(oldest.since);
      if (this.timer === undefined || due < this.timer.due) {
        this.timer?.cancel();
        const cancel = this.clock.after(due - now, () => {
          this.timer = undefined;
          this.pump();
        });
        this.timer = { cancel, due };
      }
    }
    this.options.onPending?.(this.pending);
    if (this.pending === 0) for (const resolve of this.drained.splice(0)) resolve();
  }
}
