// Benchmark: how fast the decision function handles events the way ApiServerSource delivers
// them (one at a time, waiting for each answer). (a) update events of initialized pods, which
// are skipped; (b) add events that are decided, signed and dispatched to a node-runner on
// loopback that verifies each signature (RFC 9421, digest, replay) before answering. In (b) the
// node-runner's pod lookup, netns scan and apply answer from memory: their cost is what
// `npm run bench:apply` measures.   npm run bench:function -- [events]
import { generateKeyPairSync } from "node:crypto";
import http from "node:http";
import { pino } from "pino";
import { Dispatcher } from "../functions/dispatch.ts";
import { parsePolicy } from "../functions/policy.ts";
import { createFunctionApp, createFunctionMetrics } from "../functions/server.ts";
import { createMetrics } from "../node-runner/metrics.ts";
import { ReplayCache } from "../node-runner/replay.ts";
import { createNodeRunnerApp } from "../node-runner/server.ts";
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

// The node-runner: real verification; pods "exist" with the UIDs the events carry.
const uids = new Set<string>();
const authorities = new Set<string>();
const runner = await listen(
  createNodeRunnerApp({
    nodeName: "node-a",
    authorities,
    startedAtMs: Date.now() - 5000,
    keys: { current: new Map([["fn-1", publicKey]]) },
    replay: new ReplayCache(1_000_000),
    pods: {
      getPod: () => Promise.resolve({ uid: [...uids].pop() ?? "", nodeName: "node-a", hostNetwork: false, terminating: false, annotations: {} }),
      markInitialized: () => Promise.resolve(),
      clearMark: () => Promise.resolve(),
      recordEvent: () => Promise.resolve(),
    },
    resolveNetns: () => Promise.resolve({ found: true, netns: { inode: "4026532000", path: "/proc/1/ns/net", pid: 1, processes: 1, hostInode: "4026531840" } }),
    openNetns: (netns) => ({ fd: -1, inode: netns.inode, close: () => undefined }),
    applierFor: () => Promise.resolve({ apply: () => Promise.resolve({ result: "unchanged" as const, digest: "0123456789abcdef" }), remove: () => Promise.resolve("absent" as const) }),
    log: silent,
    metrics: createMetrics({ defaultMetrics: false }),
  }),
);

authorities.add(`127.0.0.1:${runner.port}`);
const dispatcher = new Dispatcher({ signingKey: () => ({ keyid: "fn-1", privateKey }), port: runner.port, addressFor: () => "127.0.0.1" });
const policy = parsePolicy("");
const fn = await listen(
  createFunctionApp({
    policy: () => policy,
    dispatcher,
    cluster: { getPod: () => Promise.resolve(undefined), getNamespace: () => Promise.resolve(undefined), listPods: async function* () {}, recordPodWarning: () => Promise.resolve() },
    log: silent,
    metrics: createFunctionMetrics({ defaultMetrics: false }),
  }),
);

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function send(event: { headers: Record<string, string>; body: string }): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: fn.port, path: "/", method: "POST", agent, headers: event.headers }, (res) => {
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
const skipped = await run((i) => apiServerSourceEvent("update", meshPodObject(`web-${i}`, { annotations: marked })), () => undefined);
const addEvents: ReturnType<typeof meshPodObject>[] = [];
const dispatched = await run(
  (i) => {
    const pod = meshPodObject(`new-${i}`);
    addEvents[i] = pod;
    return apiServerSourceEvent("add", pod);
  },
  (i) => {
    uids.add(addEvents[i]?.metadata.uid ?? "");
  },
);

const row = (name: string, r: { latencies: number[]; perSecond: number }): (string | number)[] => {
  const s = summarize(r.latencies);
  return [name, String(r.latencies.length), r.perSecond.toFixed(0), s.median, s.p99, s.max];
};
console.log(machineDescription());
console.log("one event at a time over a keep-alive connection, as the ApiServerSource adapter sends; latency in ms\n");
console.log(
  table(["events", "count", "events/s", "median", "p99", "max"], [
    row("(a) update of an initialized pod: skipped", skipped),
    row("(b) add: decided, signed, dispatched, verified by the node-runner", dispatched),
  ]),
);
dispatcher.close();
fn.close();
runner.close();
agent.destroy();
