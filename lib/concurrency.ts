// At most `limit` tasks at once, the rest in arrival order: used by the function's dispatcher
// (requests to node-runners) and by the node-runner (pods programmed at once).
export class ConcurrencyLimit {
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`concurrency limit must be a positive integer, got ${limit}`);
  }

  /** No task running or waiting. */
  get idle(): boolean {
    return this.running === 0 && this.waiting.length === 0;
  }

  /** Tasks running or waiting for a slot. */
  get pending(): number {
    return this.running + this.waiting.length;
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.running < this.limit) this.running++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // the slot is handed over, already counted
    try {
      return await work();
    } finally {
      // A finished task hands its slot to the first waiter: a task that arrives meanwhile
      // cannot take it first and run one more than `limit` at once.
      const next = this.waiting.shift();
      if (next === undefined) this.running--;
      else next();
    }
  }
}
