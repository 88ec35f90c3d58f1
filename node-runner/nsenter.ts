// Run one command inside a network namespace with nsenter and collect its answer: the
// in-process runner (apply.ts), for tests and tools. The node-runner itself sends its commands
// through its command helper (netns-exec/, helper-runner.ts).
import { spawn } from "node:child_process";

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

const COMMAND_TIMEOUT_MS = 10_000;

/**
 * `netnsPath` is what nsenter opens (`/proc/self/fd/3` when `fd` is passed as the child's fd 3,
 * or a path naming a namespace descriptor the caller holds).
 */
export function runInNetns(netnsPath: string, argv: readonly string[], input: string | undefined, fd?: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn("nsenter", [`--net=${netnsPath}`, "--", ...argv], { stdio: fd === undefined ? ["pipe", "pipe", "pipe"] : ["pipe", "pipe", "pipe", fd] });
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (t: string) => (stdout += t));
    child.stderr?.setEncoding("utf8").on("data", (t: string) => (stderr += t));
    const timer = setTimeout(() => child.kill("SIGKILL"), COMMAND_TIMEOUT_MS);
    child.on("error", (err) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: err.message });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? 128, stdout, stderr: signal === null ? stderr : `${stderr}killed by ${signal}` });
    });
    // A command that does not read its input may exit first: that is not an error here.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(input ?? "");
  });
}
