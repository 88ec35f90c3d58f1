// A NetnsRunner that hands commands to the command helper (command-helper.ts), started once and
// again if it ever exits, instead of forking the node-runner for each command.
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import type { CommandResult, NetnsRunner } from "./apply.ts";

export function helperRunner(options: { maxOldSpaceMb?: number; entry?: string } = {}): { run: NetnsRunner; stop: () => void } {
  // Each helper answers only its own requests: one that exits fails only what it was given.
  let helper: { child: ChildProcessWithoutNullStreams; waiting: Map<number, (r: CommandResult) => void> } | undefined;
  let nextId = 1;

  const start = (): NonNullable<typeof helper> => {
    const waiting = new Map<number, (r: CommandResult) => void>();
    // The helper is this file's sibling, .ts under tsx (the runner's own loader flags passed on),
    // .js when compiled; or the compiled helper named by `entry` (benchmarks run what images run).
    const entry = options.entry ?? path.join(import.meta.dirname, `command-helper${path.extname(import.meta.filename)}`);
    const child = spawn(process.execPath, [...(options.entry === undefined ? process.execArgv : []), `--max-old-space-size=${options.maxOldSpaceMb ?? 32}`, entry], { stdio: ["pipe", "pipe", "pipe"] });
    createInterface({ input: child.stdout }).on("line", (line) => {
      const reply = JSON.parse(line) as { id: number } & CommandResult;
      const resolve = waiting.get(reply.id);
      waiting.delete(reply.id);
      resolve?.({ code: reply.code, stdout: reply.stdout, stderr: reply.stderr });
    });
    child.stderr.resume();
    child.on("exit", (code, signal) => {
      if (helper?.child === child) helper = undefined;
      for (const [id, resolve] of waiting) {
        waiting.delete(id);
        resolve({ code: 125, stdout: "", stderr: `the command helper exited (${signal ?? String(code)})` });
      }
    });
    return { child, waiting };
  };

  return {
    run: (netns, argv, input) =>
      new Promise((resolve) => {
        helper ??= start();
        const id = nextId++;
        helper.waiting.set(id, resolve);
        // The node-runner's own descriptor of the namespace, by path: /proc/<pid>/fd/<n>.
        helper.child.stdin.write(`${JSON.stringify({ id, netns: `/proc/${process.pid}/fd/${netns.fd}`, argv, input })}\n`);
      }),
    stop: () => {
      helper?.child.stdin.end();
      helper = undefined;
    },
  };
}
