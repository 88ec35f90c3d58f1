// The command seam of the apply engines: a command run inside a network namespace and its
// answer, how a failed one is classified (by how it ended, never by its wording), and the
// in-process runner (nsenter) that tests and tools use. The node-runner itself sends its
// commands through its command helper (netns-exec/, helper-runner.ts).
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
    const child = spawn("nsenter", [`--net=${netnsPath}`, "--", ...argv], {
      stdio: fd === undefined ? ["pipe", "pipe", "pipe"] : ["pipe", "pipe", "pipe", fd],
    });
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

/** An open network namespace: a descriptor of /proc/<pid>/ns/net and its inode. */
export interface NetnsTarget {
  readonly fd: number;
  readonly inode: string;
}

/** Runs a command inside a network namespace. */
export type NetnsRunner = (netns: NetnsTarget, argv: readonly string[], input?: string) => Promise<CommandResult>;

/** In this process: the namespace descriptor becomes the child's fd 3, which nsenter enters. */
export const nsenterRunner: NetnsRunner = (netns, argv, input) => runInNetns("/proc/self/fd/3", argv, input, netns.fd);

/**
 * What went wrong with a command of an apply, by kind (never by the command's wording): the
 * namespace is gone, the node cannot run it now (tool missing, out of time, the helper died),
 * or the tool refused its input.
 */
export type ApplyFailureKind = "netns-gone" | "node-unavailable" | "refused";

export class ApplyError extends Error {
  override name = "ApplyError";
  constructor(
    message: string,
    readonly kind: ApplyFailureKind = "refused",
  ) {
    super(message);
  }
}

/** The ApplyError for a command that did not succeed: its kind from how it ended, its message from its stderr. */
export function commandError(what: string, r: CommandResult): ApplyError {
  const detail = `${what} failed: ${r.stderr.trim()}`;
  if (r.failure === "netns-gone") return new ApplyError(detail, "netns-gone");
  if (r.failure !== undefined) return new ApplyError(`${detail} (${r.failure})`, "node-unavailable");
  return new ApplyError(detail, "refused");
}
