// The node-runner's command helper: a small, long-lived process that runs the commands of an
// apply inside a network namespace. The node-runner itself is a large process; every spawn from
// it forks all of it (milliseconds each, growing with its memory, the event loop blocked
// meanwhile). This process is started once, keeps a small heap, and forks only itself.
//
// Protocol: one JSON request per line on stdin, {id, netns, argv, input}; one JSON answer per
// line on stdout, {id, code, stdout, stderr}, in any order. `netns` is a path that names the
// namespace the node-runner holds open (/proc/<node-runner>/fd/<n>): the namespace it resolved
// and checked, whatever happens to the pod's processes meanwhile.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const COMMAND_TIMEOUT_MS = 10_000;

interface Request {
  readonly id: number;
  readonly netns: string;
  readonly argv: readonly string[];
  readonly input?: string;
}

function answer(reply: { id: number; code: number; stdout: string; stderr: string }): void {
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

function run(req: Request): void {
  const child = spawn("nsenter", [`--net=${req.netns}`, "--", ...req.argv], { stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (t: string) => (stdout += t));
  child.stderr.setEncoding("utf8").on("data", (t: string) => (stderr += t));
  const timer = setTimeout(() => child.kill("SIGKILL"), COMMAND_TIMEOUT_MS);
  child.on("error", (err) => {
    clearTimeout(timer);
    answer({ id: req.id, code: 127, stdout, stderr: err.message });
  });
  child.on("close", (code, signal) => {
    clearTimeout(timer);
    answer({ id: req.id, code: code ?? 128, stdout, stderr: signal === null ? stderr : `${stderr}killed by ${signal}` });
  });
  child.stdin.on("error", () => undefined);
  child.stdin.end(req.input ?? "");
}

createInterface({ input: process.stdin }).on("line", (line) => {
  let req: Request;
  try {
    req = JSON.parse(line) as Request;
  } catch {
    return; // not from the node-runner
  }
  if (typeof req.id !== "number" || typeof req.netns !== "string" || !Array.isArray(req.argv)) return;
  run(req);
});
// The node-runner is gone: so is the reason to exist.
process.stdin.on("end", () => process.exit(0));
