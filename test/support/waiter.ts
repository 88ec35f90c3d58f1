// The waiter as its image runs it: the static Go binary `npm run build:waiter` makes (Go's build
// cache makes a repeat build a fraction of a second). Tests spawn it inside test pods.
import { execFileSync } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "../..");
export const WAITER_BINARY = path.join(root, "bundle/podnet-wait");

/** Why the waiter cannot be built here, or undefined. */
export function waiterUnavailableReason(): string | undefined {
  try {
    execFileSync("go", ["version"], { stdio: "ignore" });
    return undefined;
  } catch {
    return "needs Go to build the waiter (https://go.dev/dl, or apt-get install golang-go)";
  }
}

let built = false;

/** Build the waiter once per test process; returns its path. */
export function waiterBinary(): string {
  if (!built) {
    execFileSync("npm", ["run", "--silent", "build:waiter"], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
    built = true;
  }
  return WAITER_BINARY;
}

/** The waiter's exit codes as the README documents them. */
export const WAIT_EXIT = { ok: 0, timeout: 10, probeFailed: 11, badAnnotations: 12, ownNetnsUnknown: 13, usage: 64 } as const;
