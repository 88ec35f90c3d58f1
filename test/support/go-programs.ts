// The project's two Go programs as the images run them: the waiter (waiter/, podnet-wait) and
// the node-runner's command helper (node-runner/netns-exec, podnet-netns-exec), static binaries
// that `npm run build:go` writes to bundle/ (Go's build cache makes a repeat build a fraction of
// a second). Tests run them inside test pods and start the node-runner with the helper.
import { execFileSync } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "../..");

/** Why the Go programs cannot be built here, or undefined. */
export function goProgramsUnavailableReason(): string | undefined {
  try {
    execFileSync("go", ["version"], { stdio: "ignore" });
    return undefined;
  } catch {
    return "needs Go to build the waiter and the command helper (https://go.dev/dl, or apt-get install golang-go)";
  }
}

let built = false;

/** Build both once per test process; returns the program's path. */
export function goProgram(name: "podnet-wait" | "podnet-netns-exec"): string {
  if (!built) {
    execFileSync("npm", ["run", "--silent", "build:go"], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
    built = true;
  }
  return path.join(root, "bundle", name);
}

/** The waiter's exit codes as the README documents them. */
export const WAIT_EXIT = { ok: 0, timeout: 10, probeFailed: 11, badAnnotations: 12, ownNetnsUnknown: 13, usage: 64 } as const;
