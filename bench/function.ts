// Benchmark: how fast the decision function handles events the way ApiServerSource delivers
// them (one at a time, waiting for each answer), beside its floors: a bare express 5 server
// answering the same requests, and one that also parses each body as JSON, in the same run. Each runs in a process of its own, with the
// function's V8 flags from its Knative Service, as in a cluster: this process is the event
// source. (a) update events of initialized pods, which are skipped; (b) add events that are
// decided and queued (answered at once), then signed and dispatched in parallel to a
// node-runner in its own process (its DaemonSet's V8 flags) on loopback that verifies each
// signature (RFC 9421, digest, replay) before answering; the time until the last is verified is
// reported too, and each process's CPU per event: the three share this machine's cores. The API
// server's pod read and the node-runner's pod lookup, netns scan and apply answer from memory:
// their cost is what `npm run bench:apply` measures.   npm run bench:function -- [events]
import { spawn, type ChildProcessByStdio } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import path from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { apiServerSourceEvent } from "../test/support/apiserversource.ts";
import { manifestV8Flags } from "../test/support/components.ts";
import { cpuSeconds } from "../test/support/processes.ts";
import { benchPod } from "./function-pods.ts";
import { machineDescription, summarize, table } from "./machine.ts";

const count = Number(process.argv[2] ?? "4000");
const WARM_UP_EVENTS = 1000;
const { privateKey, publicKey } = generateKeyPairSync("ed25519");

/** A server in its own process: its port, and its answers to lines on stdin. */
interface Server {
  port: number;
  pid: number | undefined;
  ask: () => Promise<Record<string, number | boolean>>;
  stop: () => void;
}

/** An event as the adapter sends it. */
interface SourceEvent {
  headers: Record<string, string>;
  body: string;
}

async function startServer(args: string[], env: NodeJS.ProcessEnv, nodeFlags: readonly string[] = []): Promise<Server> {
  const child: ChildProcessByStdio<Writable, Readable, null> = spawn(process.execPath, [...nodeFlags, "--import", "tsx", ...args], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const next = (): Promise<Record<string, number | boolean>> =>
    new Promise((resolve) => {
      lines.once("line", (line) => {
        resolve(JSON.parse(line) as Record<string, number | boolean>);
      });
    });
  const port = Number((await next()).port);
  return {
    port,
    pid: child.pid,
    ask: () => {
      const answer = next();
      child.stdin.write("?\n");
      return answer;
    },
    stop: () => child.kill(),
  };
}

const here = import.meta.dirname;
// The node-runner (real verification, everything else from memory).
const runner = await startServer(
  [path.join(here, "stub-node-runner.ts")],
  { PUBLIC_KEY_PEM: publicKey.export({ type: "spki", format: "pem" }).toString() },
  manifestV8Flags().nodeRunner,
);
const fn = await startServer(
  [path.join(here, "function-server.ts"), "function"],
  { PRIVATE_KEY_PEM: privateKey.export({ type: "pkcs8", format: "pem" }).toString(), RUNNER_PORT: String(runner.port) },
  manifestV8Flags().function,
);
const floor = await startServer([path.join(here, "function-server.ts"), "floor"], {}, manifestV8Flags().function);
const floorJson = await startServer([path.join(here, "function-server.ts"), "floor-json"], {}, manifestV8Flags().function);

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function send(target: number, event: SourceEvent): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: target, path: "/", method: "POST", agent, headers: event.headers }, (res) => {
      res.resume();
      res.on("end", () => {
        resolve(res.statusCode ?? 0);
      });
    });
    req.on("error", reject);
    req.end(event.body);
  });
}

/** CPU seconds used so far by each process taking part: the server under test, the node-runner, this one. */
function cpuNow(server: { pid: number | undefined }): { server: number; runner: number; source: number } {
  const own = process.cpuUsage();
  return { server: cpuSeconds(server.pid), runner: cpuSeconds(runner.pid), source: (own.user + own.system) / 1e6 };
}

/** A server's share of a comparison, summed over its rounds. */
interface Run {
  latencies: number[];
  /** Events answered per second of answering. */
  perSecond: number;
  /** CPU ms per event of the server, the node-runner and this process. */
  cpu: string[];
  /** Answering plus, where waited for, the dispatches that followed (ms). */
  doneMs: number;
}

const ROUNDS = 4;

/**
 * The same events to each floor and to the function, in rounds that rotate between them, so
 * that the machine's drift hits all alike. Where dispatches follow the answers, each function
 * round ends when its last dispatch is answered: their CPU is part of each event's cost, and
 * none of it runs into a floor's next round.
 */
async function compare(make: (i: number) => SourceEvent, waitForDispatches: boolean): Promise<{ floor: Run; floorJson: Run; fn: Run }> {
  const events = Array.from({ length: count }, (_, i) => make(i)); // built before timing
  const servers = [floor, floorJson, fn] as const;
  for (const server of servers) for (let i = 0; i < WARM_UP_EVENTS; i++) await send(server.port, make(count + i));
  if (waitForDispatches) await fn.ask();
  const tally = () => ({ latencies: [] as number[], answeringMs: 0, doneMs: 0, cpu: { server: 0, runner: 0, source: 0 } });
  const tallies = servers.map(() => tally());
  const perRound = Math.ceil(count / ROUNDS);
  for (let round = 0; round < ROUNDS; round++) {
    const slice = events.slice(round * perRound, (round + 1) * perRound);
    for (const [s, server] of servers.entries()) {
      const t = tallies[s] ?? tally();
      const before = cpuNow(server);
      const t0 = performance.now();
      for (const event of slice) {
        const sent = performance.now();
        const status = await send(server.port, event);
        t.latencies.push(performance.now() - sent);
        if (status !== 200) throw new Error(`event answered ${status}`);
      }
      t.answeringMs += performance.now() - t0;
      if (waitForDispatches && server === fn) await fn.ask();
      t.doneMs += performance.now() - t0;
      const after = cpuNow(server);
      for (const k of ["server", "runner", "source"] as const) t.cpu[k] += after[k] - before[k];
    }
  }
  const result = (t: ReturnType<typeof tally>): Run => {
    const n = t.latencies.length;
    return {
      latencies: t.latencies,
      perSecond: n / (t.answeringMs / 1000),
      doneMs: t.doneMs,
      cpu: [t.cpu.server, t.cpu.runner, t.cpu.source].map((c) => ((c * 1000) / n).toFixed(2)),
    };
  };
  const [f, fj, fnRun] = tallies.map(result);
  if (f === undefined || fj === undefined || fnRun === undefined) throw new Error("missing run");
  return { floor: f, floorJson: fj, fn: fnRun };
}

const marked = { [MARK.status]: STATUS_INITIALIZED };
const skips = await compare((i) => apiServerSourceEvent("update", benchPod(`web-${i}`, { annotations: marked })), false);
const adds = await compare((i) => apiServerSourceEvent("add", benchPod(`new-${i}`)), true);

const row = (name: string, r: Run): (string | number)[] => {
  const s = summarize(r.latencies);
  return [name, String(r.latencies.length), r.perSecond.toFixed(0), s.median, s.p99, s.max, ...r.cpu];
};
const percentOf = (r: Run, floorRun: Run): string => `${((r.perSecond / floorRun.perSecond) * 100).toFixed(0)}%`;
console.log(machineDescription());
console.log(
  `one event at a time over a keep-alive connection, as the ApiServerSource adapter sends, from a process of its own, after ${WARM_UP_EVENTS} of the same kind to warm up, in ${ROUNDS} rounds rotating between the floors and the function; function and floors each in its own process with the Service's V8 flags (${manifestV8Flags().function.join(" ")}); latency in ms; CPU ms per event of the server (function or floor), the node-runner and the event source, for (b) until every dispatch is answered\n`,
);
console.log(
  table(
    ["events", "count", "events/s", "median", "p99", "max", "CPU server", "CPU runner", "CPU source"],
    [
      row("floor: bare express 5, the same update events", skips.floor),
      row("floor: bare express 5 parsing the JSON, the same update events", skips.floorJson),
      row("(a) update of an initialized pod: skipped", skips.fn),
      row("floor: bare express 5, the same add events", adds.floor),
      row("floor: bare express 5 parsing the JSON, the same add events", adds.floorJson),
      row("(b) add: decided, read, queued (the answer)", adds.fn),
    ],
  ),
);
console.log(
  `\n(a) skip path: ${percentOf(skips.fn, skips.floorJson)} of the JSON-parsing floor's events/s (${percentOf(skips.fn, skips.floor)} of bare express 5's)`,
);
const verifiedByRunner = Number((await runner.ask()).verified);
console.log(
  `(b) dispatch path: ${percentOf(adds.fn, adds.floorJson)} of the JSON-parsing floor's events/s (${percentOf(adds.fn, adds.floor)} of bare express 5's); all ${count} signed, sent and verified by the node-runner (its own process; ${verifiedByRunner} answered 200 in all, warm-up included): rounds from their first event to their last dispatch answered took ${adds.fn.doneMs.toFixed(0)} ms in all (${(count / (adds.fn.doneMs / 1000)).toFixed(0)} pods/s)`,
);
floor.stop();
floorJson.stop();
fn.stop();
runner.stop();
agent.destroy();
