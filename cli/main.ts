// pnc — the project's command line (see `pnc help`); cli/pnc.ts is the executable that runs it.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { runPnc, type Io } from "./commands.ts";
import { doctorMain } from "./doctor.ts";
import { ensureKeysMain } from "./keys-ensure.ts";
import { renewKeysMain } from "./keys-renew.ts";
import { failOpenMain } from "./fail-open.ts";
import { uninstallCheckMain } from "./uninstall-check.ts";
import { statusMain } from "./status.ts";

// Output piped into `head` and closed early is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

const args = process.argv.slice(2);
const io: Io = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  readFile: (path) => readFileSync(path, "utf8"),
  readStdin: () => readFileSync(0, "utf8"),
  writeFile: (path, text) => {
    // `--out ./podnet-keys` names a folder that need not exist yet.
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileSync(path, text, { mode: path.endsWith(".secret.yaml") ? 0o600 : 0o644 });
  },
};
// The commands that talk to the API server (the chart's key Job, status, doctor) are asynchronous.
process.exitCode =
  args[0] === "keys" && args[1] === "ensure"
    ? await ensureKeysMain(args.slice(2), io)
    : args[0] === "keys" && args[1] === "renew"
      ? await renewKeysMain(args.slice(2), io)
      : args[0] === "status"
        ? await statusMain(args.slice(1), io)
        : args[0] === "doctor"
          ? await doctorMain(args.slice(1), io)
          : args[0] === "uninstall-check"
            ? await uninstallCheckMain(args.slice(1), io)
            : args[0] === "fail-open"
              ? await failOpenMain(args.slice(1), io)
              : runPnc(args, io);
