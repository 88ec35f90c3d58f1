// The project's two Go programs as the images run them: the waiter (waiter/, podnet-wait) and
// the node-runner's command helper (node-runner/netns-exec, podnet-netns-exec), static binaries
// that `npm run build:go` writes to bundle/ (Go's build cache makes a repeat build a fraction of
// a second). Tests run them inside test pods and start the node-runner with the helper.
import assert from "node:assert/strict";
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

/** gofmt finds nothing to change in a Go module and go vet passes, for each architecture the images are built for. */
export function assertGoModuleClean(dir: string, arches: readonly string[] = ["amd64", "arm64"]): void {
  assert.equal(execFileSync("gofmt", ["-l", "."], { cwd: dir, encoding: "utf8" }), "", "gofmt -l lists files to format");
  for (const arch of arches) execFileSync("go", ["vet", "./..."], { cwd: dir, env: { ...process.env, GOARCH: arch }, stdio: ["ignore", "ignore", "inherit"] });
}

/** The waiter's exit codes as docs/reference.md documents them. */
export const WAIT_EXIT = { ok: 0, timeout: 10, probeFailed: 11, badAnnotations: 12, ownNetnsUnknown: 13, refused: 14, usage: 64 } as const;
