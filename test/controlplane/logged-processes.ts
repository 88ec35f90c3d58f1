// The processes a control plane, a cluster or a node runs: each in a process group of its own
// (a stop, and the next start's reap after a killed run, reach everything it forks), its output
// in <dir>/<name>.log, its pid in <dir>/pids.
import { spawn, type ChildProcess } from "node:child_process";
import { appendFileSync, createWriteStream, existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

export interface LoggedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
}

export class LoggedProcesses {
  private readonly started: LoggedProcess[] = [];
  readonly pidsFile: string;

  constructor(readonly dir: string) {
    this.pidsFile = path.join(dir, "pids");
    writeFileSync(this.pidsFile, "");
  }

  /** `netns`/`mountNamespace`: entered with nsenter first (under /run/netns, a /proc/<pid>/ns/mnt path). */
  start(
    name: string,
    command: string,
    args: readonly string[],
    options: { env?: NodeJS.ProcessEnv; netns?: string; mountNamespace?: string } = {},
  ): LoggedProcess {
    const namespaces = [
      ...(options.mountNamespace === undefined ? [] : [`--mount=${options.mountNamespace}`]),
      ...(options.netns === undefined ? [] : [`--net=/run/netns/${options.netns}`]),
    ];
    const [file, argv] = namespaces.length === 0 ? [command, [...args]] : ["nsenter", [...namespaces, "--", command, ...args]];
    const out = createWriteStream(path.join(this.dir, `${name}.log`));
    const child = spawn(file, argv, { detached: true, stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH, ...options.env } });
    child.stdout.pipe(out);
    child.stderr.pipe(out);
    if (child.pid !== undefined) appendFileSync(this.pidsFile, `${child.pid}\n`);
    const exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        resolve();
      });
    });
    const p = { name, child, exited };
    this.started.push(p);
    return p;
  }

  /** SIGTERM to each group, the last started first; SIGKILL to one that has not ended after 5 s. */
  async stop(): Promise<void> {
    for (const p of [...this.started].reverse()) {
      const pid = p.child.pid;
      if (pid === undefined || !running(p)) continue;
      killGroup(pid, "SIGTERM");
      const timer = setTimeout(() => {
        killGroup(pid, "SIGKILL");
      }, 5000);
      await p.exited;
      clearTimeout(timer);
    }
  }

  pids(): number[] {
    return this.started.filter(running).map((p) => p.child.pid ?? -1);
  }
}

export const running = (p: LoggedProcess): boolean => p.child.exitCode === null && p.child.signalCode === null;

export function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/** After a killed run: SIGKILL to every group its pids file names (LoggedProcesses.pidsFile). */
export function killRecordedGroups(dir: string): void {
  const pidsFile = path.join(dir, "pids");
  if (!existsSync(pidsFile)) return;
  for (const line of readFileSync(pidsFile, "utf8").split("\n")) if (line !== "") killGroup(Number(line), "SIGKILL");
}
