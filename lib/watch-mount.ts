// Follow a mounted ConfigMap or Secret: call `onChange` when its directory changes (kubelet
// swaps a symlink there) and, as a fallback where file events are not delivered, every
// `pollMs`. Returns a function that stops both.
import { watch } from "node:fs";
import type { Logger } from "pino";
import { errorMessage } from "./errors.ts";

export function watchMount(dir: string, onChange: () => void, options: { pollMs: number; log: Logger }): () => void {
  let watcher: ReturnType<typeof watch> | undefined;
  try {
    watcher = watch(dir, onChange);
  } catch (err) {
    options.log.warn({ err: errorMessage(err), dir }, "cannot watch the mounted directory; polling only");
  }
  const timer = setInterval(onChange, options.pollMs);
  timer.unref();
  return () => {
    watcher?.close();
    clearInterval(timer);
  };
}
