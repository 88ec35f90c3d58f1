// The function's one work queue (docs/architecture.md §8), with client-go's workqueue semantics:
// a key (a pod's UID) is queued once — a newer item for it replaces the one waiting —, one item
// per key is processed at a time, an item whose processing says "retry" comes back after a
// per-key backoff, and a key is forgotten once its item is done or its retries are spent.
// Events and the resync are its producers; the reconciler is its one consumer. Bounded in keys.

export type ProcessOutcome = { readonly done: true } | { readonly done: false; readonly retryAfterMs?: number };

interface KeyState<T> {
  /** The newest item not yet processed. */
  pending: T | undefined;
  /** Failures in a row of this key's items. */
  failures: number;
  processing: boolean;
  backoff: NodeJS.Timeout | undefined;
}

export interface WorkQueueOptions<T> {
  /** Keys held at most (waiting, processing or backing off); `add` refuses more. */
  readonly maxKeys: number;
  /** The delay before each retry in turn; when they are spent, the key is given up. */
  readonly retryDelaysMs: readonly number[];
  /** The longest Retry-After honoured over a retry's own delay. */
  readonly maxRetryAfterMs?: number;
  /** Process one item; `retry` counts the retries before this one (0: its first run). */
  readonly process: (item: T, retry: number) => Promise<ProcessOutcome>;
  /** A key whose retries are spent (the resync catches it). */
  readonly onGiveUp?: (item: T, failures: number) => void;
  /** The number of keys held, whenever it changes (a gauge). */
  readonly onSize?: (size: number) => void;
}

export class WorkQueue<T> {
  private readonly keys = new Map<string, KeyState<T>>();
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly options: WorkQueueOptions<T>) {}

  /** Keys queued, processing or backing off. */
  get size(): number {
    return this.keys.size;
  }

  /**
   * Queue `item` under `key`. "coalesced": the key was already held, and this item replaces the
   * one waiting (a key backing off runs again now: new information). "full": nothing queued.
   */
  add(key: string, item: T): "queued" | "coalesced" | "full" {
    const state = this.keys.get(key);
    if (state !== undefined) {
      state.pending = item;
      if (state.backoff !== undefined) {
        clearTimeout(state.backoff);
        state.backoff = undefined;
        void this.run(key, state);
      }
      return "coalesced";
    }
    if (this.keys.size >= this.options.maxKeys) return "full";
    const fresh: KeyState<T> = { pending: item, failures: 0, processing: false, backoff: undefined };
    this.keys.set(key, fresh);
    this.options.onSize?.(this.keys.size);
    void this.run(key, fresh);
    return "queued";
  }

  /** Resolves once no key is held (drain on SIGTERM); keys backing off are given up at once. */
  whenIdle(): Promise<void> {
    for (const [key, state] of this.keys) {
      if (state.backoff === undefined) continue;
      clearTimeout(state.backoff);
      this.giveUp(key, state);
    }
    if (this.keys.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async run(key: string, state: KeyState<T>): Promise<void> {
    if (state.processing) return; // the running loop takes the new item next
    state.processing = true;
    while (state.pending !== undefined) {
      const item = state.pending;
      state.pending = undefined;
      let outcome: ProcessOutcome;
      try {
        outcome = await this.options.process(item, state.failures);
      } catch {
        outcome = { done: false };
      }
      if (outcome.done) {
        state.failures = 0;
        continue;
      }
      // A newer item may have arrived during the await: it goes next.
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
      if (state.pending !== undefined) continue;
      const delay = this.options.retryDelaysMs[state.failures];
      state.failures++;
      if (delay === undefined) {
        state.processing = false;
        this.options.onGiveUp?.(item, state.failures);
        this.forget(key);
        return;
      }
      const wait = Math.max(delay, Math.min(outcome.retryAfterMs ?? 0, this.options.maxRetryAfterMs ?? 5000));
      state.pending = item;
      state.processing = false;
      state.backoff = setTimeout(() => {
        state.backoff = undefined;
        void this.run(key, state);
      }, wait);
      return;
    }
    state.processing = false;
    this.forget(key);
  }

  private giveUp(key: string, state: KeyState<T>): void {
    state.backoff = undefined;
    if (state.pending !== undefined) this.options.onGiveUp?.(state.pending, state.failures);
    this.forget(key);
  }

  private forget(key: string): void {
    this.keys.delete(key);
    this.options.onSize?.(this.keys.size);
    if (this.keys.size > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
