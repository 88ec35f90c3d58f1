// Run one command inside a network namespace with nsenter and collect its answer: the
// in-process runner (apply.ts), for tests and tools. The node-runner itself sends its commands
// through its command helper (netns-exec/, helper-runner.ts).
import { spawn } from "node:child_process";

/**
 * Why a command did not run to its own exit, as the runner that started it knows it (never read
 * from the command's output): its namespace could not be entered, the tool is not installed, it
 * ran out of time or was killed, or the command helper itself died.
 */
export type CommandFailure = "netns-gone" | "tool-missing" | "timeout" | "killed" | "helper-crashed";

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Set when the command did not run to its own exit; `code` is then nsenter's convention. */
  readonly failure?: CommandFailure;
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
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, COMMAND_TIMEOUT_MS);
    child.on("error", (err) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: err.message, failure: "tool-missing" });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (signal === null) resolve({ code: code ?? 128, stdout, stderr });
      else resolve({ code: 128, stdout, stderr: `${stderr}killed by ${signal}`, failure: timedOut ? "timeout" : "killed" });
    });
    // A command that does not read its input may exit first: that is not an error here.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(input ?? "");
  });
}
