// pnc — the project's command line (see `pnc help`); cli/pnc.ts is the executable that runs it.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

// Output piped into `head` and closed early is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

const args = process.argv.slice(2);
if (args[0] === "wait") {
  // The init container's command, in every mesh pod's start: only the waiter's own modules are
  // loaded (the other commands pull in YAML, schemas and the decision logic).
  const { waitMain } = await import("../waiter/wait-main.ts");
  process.exitCode = await waitMain(args.slice(1));
} else {
  const { runPnc } = await import("./commands.ts");
  process.exitCode = runPnc(args, {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    readFile: (path) => readFileSync(path, "utf8"),
    readStdin: () => readFileSync(0, "utf8"),
    writeFile: (path, text) => {
      // `--out ./podnet-keys` names a folder that need not exist yet.
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      writeFileSync(path, text, { mode: path.endsWith(".secret.yaml") ? 0o600 : 0o644 });
    },
  });
}
