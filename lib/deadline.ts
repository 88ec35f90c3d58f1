/** A call that did not answer within its deadline: its request was destroyed (the other side may still have acted on it). */
export class DeadlineError extends Error {
  override name = "DeadlineError";
}
