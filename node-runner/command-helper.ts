// The node-runner's command helper: a small, long-lived process that runs the commands of an
// apply inside a network namespace. The node-runner itself is a large process; every spawn from
// it forks all of it (milliseconds each, growing with its memory, the event loop blocked
// meanwhile). This process is started once, keeps a small heap, and forks only itself.
//
// Protocol: one JSON request per line on stdin, {id, netns, argv, input}; one JSON answer per
// line on stdout, {id, code, stdout, stderr}, in any order. `netns` is a path that names the
// namespace the node-runner holds open (/proc/<node-runner>/fd/<n>): the namespace it resolved
// and checked, whatever happens to the pod's processes meanwhile.
import { createInterface } from "node:readline";
import { runInNetns } from "./nsenter.ts";

interface Request {
  readonly id: number;
  readonly netns: string;
  readonly argv: readonly string[];
  readonly input?: string;
}

function run(req: Request): void {
  void runInNetns(req.netns, req.argv, req.input).then((r) => {
    process.stdout.write(`${JSON.stringify({ id: req.id, ...r })}\n`);
  });
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
