// Benchmark: how fast the decision function handles events the way ApiServerSource delivers
// them (one at a time, waiting for each answer), beside its floor: a bare express 5 server
// answering the same requests in the same run. (a) update events of initialized pods, which
// are skipped; (b) add events that are decided and queued (answered at once), then signed and
// dispatched in parallel to a node-runner in its own process on loopback that verifies each
// signature (RFC 9421, digest, replay) before answering; the time until the last is verified is reported too. The
// API server's pod read and the node-runner's pod lookup, netns scan and apply answer from
// memory: their cost is what `npm run bench:apply` measures.   npm run bench:function -- [events]
import { spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import path from "node:path";
import { createInterface } from "node:readline";
import express from "express";
import { pino } from "pino";
import { Dispatcher } from "../functions/dispatch.ts";
import { parsePod } from "../functions/pod.ts";
import { parsePolicy } from "../functions/policy.ts";
import { createFunctionMetrics } from "../functions/metrics.ts";
import { createFunctionApp } from "../functions/server.ts";
import { apiServerSourceEvent, meshPodObject } from "../test/support/apiserversource.ts";
import { machineDescription, summarize, table } from "./machine.ts";

const count = Number(process.argv[2] ?? "2000");
const silent = pino({ level: "silent" });
const { privateKey, publicKey } = generateKeyPairSync("ed25519");

async function listen(handler: http.RequestListener): Promise<{ port: number; close: () => void }> {
  const server = http.createServer({ keepAlive: true }, handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return { port: address.port, close: () => server.close() };
}

// The node-runner in its own process (real verification, everything else from memory).
const runnerProcess = spawn(process.execPath, ["--import", "tsx", path.join(import.meta.dirname, "stub-node-runner.ts")], {
  env: { ...process.env, PUBLIC_KEY_PEM: publicKey.export({ type: "spki", format: "pem" }).toString() },
  stdio: ["pipe", "pipe", "inherit"],
});
const runnerLines = createInterface({ input: runnerProcess.stdout });
const nextRunnerLine = (): Promise<Record<string, number>> =>
  new Promise((resolve) => {
    runnerLines.once("line", (line) => {
      resolve(JSON.parse(line) as Record<string, number>);
    });
  });
const runner = { port: (await nextRunnerLine()).port ?? 0 };
const runnerVerified = async (): Promise<number> => {
  const answer = nextRunnerLine();
  runnerProcess.stdin.write("?\n");
  return (await answer).verified ?? 0;
};
// The API server's view of the pods the events name (the function reads a pod before acting).
const apiPods = new Map<string, ReturnType<typeof meshPodObject>>();
const dispatcher = new Dispatcher({ signingKey: () => ({ keyid: "fn-1", privateKey }), port: runner.port, addressFor: () => "127.0.0.1" });
const policy = parsePolicy("");
const fn = await listen(
  createFunctionApp({
    policy: () => policy,
    dispatcher,
    cluster: { getPod: (_namespace, name) => Promise.resolve(apiPods.has(name) ? parsePod(apiPods.get(name)) : undefined), getNamespace: () => Promise.resolve(undefined), listPods: async function* () {}, recordPodWarning: () => Promise.resolve() },
    log: silent,
    metrics: createFunctionMetrics({ defaultMetrics: false }),
  }),
);

// The floor: express 5 parsing the body and answering JSON, nothing else.
const bare = express();
bare.post("/", express.raw({ type: () => true, limit: 1024 * 1024 }), (_req, res) => {
  res.status(200).json({ results: [] });
});
const floor = await listen(bare);

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let target = 0;
function send(event: { headers: Record<string, string>; body: string }): Promise<number> {
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

async function run(make: (i: number) => { headers: Record<string, string>; body: string }, expect: (i: number) => void): Promise<{ latencies: number[]; perSecond: number }> {
  const events = Array.from({ length: count }, (_, i) => make(i)); // built before timing
  for (let i = 0; i < 200; i++) await send(make(count + i)); // warm-up
  const latencies: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    expect(i);
    const event = events[i];
    if (event === undefined) throw new Error("missing event");
    const t = performance.now();
    const status = await send(event);
    latencies.push(performance.now() - t);
    if (status !== 200) throw new Error(`event ${i}: status ${status}`);
  }
  return { latencies, perSecond: count / ((performance.now() - t0) / 1000) };
}

const marked = { "pod-network-controller.istio.io/status": "initialized" };
const skipEvent = (i: number) => apiServerSourceEvent("update", meshPodObject(`web-${i}`, { annotations: marked }));
target = floor.port;
const bareSkip = await run(skipEvent, () => undefined);
target = fn.port;
const skipped = await run(skipEvent, () => undefined);
const addEvent = (i: number) => {
  const pod = meshPodObject(`new-${i}`);
  apiPods.set(pod.metadata.name, pod);
  return apiServerSourceEvent("add", pod);
};
target = floor.port;
const bareAdd = await run(addEvent, () => undefined);
target = fn.port;
await dispatcher.whenIdle(); // warm-up dispatches done
const tAdd = performance.now();
const dispatched = await run(addEvent, () => undefined);
await dispatcher.whenIdle();
const allVerifiedMs = performance.now() - tAdd;

const row = (name: string, r: { latencies: number[]; perSecond: number }): (string | number)[] => {
  const s = summarize(r.latencies);
  return [name, String(r.latencies.length), r.perSecond.toFixed(0), s.median, s.p99, s.max];
};
console.log(machineDescription());
console.log("one event at a time over a keep-alive connection, as the ApiServerSource adapter sends; latency in ms\n");
console.log(
  table(["events", "count", "events/s", "median", "p99", "max"], [
    row("floor: bare express 5, the same update events", bareSkip),
    row("(a) update of an initialized pod: skipped", skipped),
    row("floor: bare express 5, the same add events", bareAdd),
    row("(b) add: decided, read, queued (the answer)", dispatched),
  ]),
);
console.log(`\n(a) skip path: ${((skipped.perSecond / bareSkip.perSecond) * 100).toFixed(0)}% of bare express 5's events/s`);
const verifiedByRunner = await runnerVerified();
console.log(`(b) dispatch path: ${((dispatched.perSecond / bareAdd.perSecond) * 100).toFixed(0)}% of bare express 5's events/s; all ${count} signed, sent and verified by the node-runner (its own process; ${verifiedByRunner} answered 200 in all, warm-up included) ${allVerifiedMs.toFixed(0)} ms after the first event (${(count / (allVerifiedMs / 1000)).toFixed(0)} pods/s)`);
dispatcher.close();
floor.close();
fn.close();
runnerProcess.kill();
agent.destroy();
