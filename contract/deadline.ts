/** A call that did not answer within its deadline (the other side may still act on it). */
export class DeadlineError extends Error {
  override name = "DeadlineError";
}

/**
 * `call`, or a DeadlineError after `ms`: a frozen API server must not hold the work waiting on
 * it. The call itself is not cancelled (the client library takes no signal).
 */
export function withDeadline<T>(call: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new DeadlineError(`${what}: no answer within ${ms} ms`));
    }, ms);
  });
  return Promise.race([call, expired]).finally(() => {
    clearTimeout(timer);
  });
}
