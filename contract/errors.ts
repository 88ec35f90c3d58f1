/** The message of anything thrown, for logs, refusals and Events. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
