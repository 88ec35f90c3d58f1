#!/usr/bin/env -S node --import tsx
// pnc — the project's command line (see `pnc help`).
import { readFileSync, writeFileSync } from "node:fs";
import { waitMain } from "../node-runner/wait-main.ts";
import { runPnc } from "./commands.ts";

// Output piped into `head` and closed early is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

const args = process.argv.slice(2);
if (args[0] === "wait") {
  // The init container's long-running command.
  process.exitCode = await waitMain(args.slice(1));
} else {
  process.exitCode = runPnc(args, {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    readFile: (path) => readFileSync(path, "utf8"),
    readStdin: () => readFileSync(0, "utf8"),
    writeFile: (path, text) => {
      writeFileSync(path, text, { mode: path.endsWith(".secret.yaml") ? 0o600 : 0o644 });
    },
  });
}
