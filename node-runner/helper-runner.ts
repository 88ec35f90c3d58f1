// A NetnsRunner that hands commands to the command helper (node-runner/netns-exec, a small Go
// program), started once and again if it ever exits, instead of forking the node-runner for
// each command. The protocol is the helper's (netns-exec/main.go).
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { accessSync, constants } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import type { CommandResult, NetnsRunner, NetnsTarget } from "./apply/commands.ts";

export const NETNS_EXEC = "podnet-netns-exec";

/** The helper's path: `command` itself when it has a slash, else the first match on PATH; undefined when none. */
export function resolveExecutable(command: string, searchPath = process.env.PATH ?? ""): string | undefined {
  const candidates = command.includes("/")
    ? [command]
    : searchPath
        .split(":")
        .filter((d) => d !== "")
        .map((d) => path.join(d, command));
  return candidates.find((file) => {
    try {
      accessSync(file, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export interface CommandHelper {
  readonly run: NetnsRunner;
  /** The namespace's nftables tables ("<family> <name>"), listed by the helper; undefined when it cannot tell. */
  readonly nftTables: (netns: NetnsTarget) => Promise<string[] | undefined>;
  readonly stop: () => void;
}

export function helperRunner(executable: string): CommandHelper {
  // Each helper answers only its own requests: one that exits fails only what it was given.
  let helper: { child: ChildProcessWithoutNullStreams; waiting: Map<number, (r: CommandResult) => void> } | undefined;
  let nextId = 1;

  const start = (): NonNullable<typeof helper> => {
    const waiting = new Map<number, (r: CommandResult) => void>();
    const child = spawn(executable, [], { stdio: ["pipe", "pipe", "pipe"] });
    const failAll = (why: string): void => {
      if (helper?.child === child) helper = undefined;
      for (const [id, resolve] of waiting) {
        waiting.delete(id);
        resolve({ code: 125, stdout: "", stderr: why, failure: "helper-crashed" });
      }
    };
    createInterface({ input: child.stdout }).on("line", (line) => {
      const reply = JSON.parse(line) as { id: number } & CommandResult;
      const resolve = waiting.get(reply.id);
      waiting.delete(reply.id);
      resolve?.({ code: reply.code, stdout: reply.stdout, stderr: reply.stderr, ...(reply.failure === undefined ? {} : { failure: reply.failure }) });
    });
    child.stderr.resume();
    child.stdin.on("error", () => undefined); // reported by "exit" or "error"
    child.on("error", (err) => {
      failAll(`the command helper ${executable} cannot run: ${err.message}`);
    });
    child.on("exit", (code, signal) => {
      failAll(`the command helper exited (${signal ?? String(code)})`);
    });
    return { child, waiting };
  };

  const send = (netns: NetnsTarget, request: { argv: readonly string[]; input: string } | { builtin: "nft-tables" }): Promise<CommandResult> =>
    new Promise((resolve) => {
      helper ??= start();
      const id = nextId++;
      helper.waiting.set(id, resolve);
      // The node-runner's own descriptor of the namespace, by path: /proc/<pid>/fd/<n>.
      helper.child.stdin.write(`${JSON.stringify({ id, netns: `/proc/${process.pid}/fd/${netns.fd}`, ...request })}\n`);
    });

  return {
    run: (netns, argv, input) => send(netns, { argv, input: input ?? "" }),
    nftTables: async (netns) => {
      const r = await send(netns, { builtin: "nft-tables" });
      return r.code === 0 ? r.stdout.split("\n").filter((line) => line !== "") : undefined;
    },
    stop: () => {
      helper?.child.stdin.end();
      helper = undefined;
    },
  };
}
