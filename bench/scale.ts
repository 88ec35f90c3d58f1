// Benchmark: the decision function, Knative's ApiServerSource adapter and the node-runners'
// HTTP side on a simulated large cluster. The real API server and etcd; kwok (built from its Go
// module) plays the kubelets of N nodes (bench/kwok-stages.yaml: a pod gets its IP, waits in its
// waiter until the mark, then runs); pods as Istio's real injector renders them with the
// project's template; the real adapter watching them; the compiled function with its Service's
// V8 flags; the node-runners' real HTTP side for every node, each at its own loopback address,
// marking pods on the real API server (bench/scale-node-runners.ts).
//
// For each pod count (cumulative): the pods created, the time until every one is marked, the
// events that took and their rate, the function's CPU per event and memory (peak and now, beside
// its heap limit), the adapter's memory; then a resync of every mesh pod beside its floor (the
// same paginated list made by the benchmark itself: requests, bytes the API server sent, time).
// At the last count, churn: R pods created and R deleted per second for S seconds, IP → dispatch
// (the pod's IP on a watch → its node-runner's signed request verified), pods left unmarked, and
// the function's memory before and after.
//
// The PingSource's resync ticks are sent as it sends them, every --resync-interval seconds: the
// pods they queue (not marked at the tick: events lost, or still on their way) are counted, and so are the times the API server closed the adapter's watch
// because it fell behind (its log: Knative's adapter then lists again and drops what the list
// returns, so the events in between are lost; only the resync finds those pods). With
// --watch-per-namespace the adapter watches each namespace on its own, as it does for a source
// whose namespaceSelector is not empty, and sends their events in parallel.
//
//   npm run bench:scale -- [--nodes 1000] [--pods 1000,10000,30000] [--churn-rate 50] [--churn-seconds 60] [--resync-interval 120] [--watch-per-namespace] [--create-rate 100] [--kwok-pods 10000]
// Needs the control plane (npm run setup) and istioctl; not root.
import { execFileSync, spawn, type ChildProcessByStdio } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { parseArgs } from "node:util";
import * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { MESH_POD_SELECTOR } from "../functions/reconcile.ts";
import { apiListAll, apiRequest, type ApiConnection } from "../lib/kube-http.ts";
import { BIN, missingBinariesReason, startControlPlane } from "../test/controlplane/harness.ts";
import { deliver, pingEvent } from "../test/support/apiserversource.ts";
import { FUNCTION_AUDIENCE, manifestV8Flags, nodeRunnerTls, scratchDir, senderToken, signingKeyDirs, startFunction } from "../test/support/components.ts";
import { kubeInject, missingIstioReason, renderInjector } from "../test/support/istio-injector.ts";
import { metricSeries, metricSum, scrapeMetrics } from "../test/support/metrics.ts";
import { cpuSeconds, peakRssMiB, pidsWhere, statusMiB } from "../test/support/processes.ts";
import { machineDescription, summarize, table, Teardown } from "./machine.ts";

const { values: flags } = parseArgs({
  options: {
    nodes: { type: "string", default: "1000" },
    pods: { type: "string", default: "1000,10000,30000" },
    namespaces: { type: "string", default: "20" },
    "churn-rate": { type: "string", default: "50" },
    "churn-seconds": { type: "string", default: "60" },
    "resync-interval": { type: "string", default: "120" },
    "watch-per-namespace": { type: "boolean", default: false },
    "create-rate": { type: "string", default: "100" },
    "kwok-pods": { type: "string", default: "10000" },
  },
});
const NODES = Number(flags.nodes);
const POD_COUNTS = flags.pods.split(",").map(Number);
const NAMESPACES = Number(flags.namespaces);
const CHURN_RATE = Number(flags["churn-rate"]);
const CHURN_SECONDS = Number(flags["churn-seconds"]);
/** The resync's interval: the PingSource's schedule (eventing/base/pingsource.yaml, every two minutes). */
const RESYNC_INTERVAL_S = Number(flags["resync-interval"]);
/** Pods created per second while filling: as a busy cluster creates them, not all at once. */
const CREATE_RATE = Number(flags["create-rate"]);
/**
 * Pods past this many are created settled: programmed and Running, by the benchmark, in one
 * status write, on the same nodes but not played by kwok (its stages skip them). On two cores kwok
 * itself saturates a core past about 10,000 pods (4 pods/s at 20,000); the function still gets
 * their events and lists them in every resync, as after its restart in a large cluster.
 */
const KWOK_PODS = Number(flags["kwok-pods"]);
const SETTLED = "bench.podnet.github.io/settled";
const unavailable = missingBinariesReason() ?? missingIstioReason();
if (unavailable !== undefined) {
  console.error(`bench:scale: ${unavailable}`);
  process.exit(1);
}
if (
  ![NODES, NAMESPACES, CHURN_RATE, CHURN_SECONDS, RESYNC_INTERVAL_S, CREATE_RATE, KWOK_PODS, ...POD_COUNTS].every((n) => Number.isInteger(n) && n >= 0) ||
  NODES < 1 ||
  NODES > 60_000 ||
  RESYNC_INTERVAL_S < 1
) {
  console.error(
    "usage: npm run bench:scale -- [--nodes N] [--pods 1000,10000,30000] [--namespaces N] [--churn-rate R] [--churn-seconds S] [--resync-interval S]",
  );
  process.exit(64);
}
const root = path.resolve(import.meta.dirname, "..");
/** Pods the benchmark creates at once. */
const CREATE_CONCURRENCY = 16;

const status = (line: string): void => {
  process.stderr.write(`bench:scale: ${line}\n`);
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A node's own loopback address: every node-runner is reached at its node's address. */
const nodeIp = (i: number): string => `127.1.${(i + 1) >> 8}.${(i + 1) & 255}`;
const nodeName = (i: number): string => `kwok-node-${i}`;
const namespaceOf = (i: number): string => `scale-${i % NAMESPACES}`;

execFileSync("npm", ["run", "--silent", "build"], { cwd: root, stdio: "inherit" });
const teardown = new Teardown();
const scratch = scratchDir("bench-scale");
teardown.add(() => {
  scratch.remove();
});
const cp = await startControlPlane({ log: status });
teardown.add(() => cp.stop());
const api: ApiConnection = { server: new URL(cp.server), ca: cp.ca, token: () => cp.adminToken };
const v8 = manifestV8Flags();
/** The processes the run needs: one that exits ends it, with its last words. */
const started: { name: string; process: { exitCode: number | null }; log: () => string }[] = [];
let reported = false;

/** A child process that prints one JSON line per line it is sent (its first line unasked). */
function startChild(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): { child: ChildProcessByStdio<Writable, Readable, null>; ask: (line?: string) => Promise<Record<string, number>> } {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const next = (): Promise<Record<string, number>> =>
    new Promise((resolve) => {
      lines.once("line", (line) => {
        resolve(JSON.parse(line) as Record<string, number>);
      });
    });
  return {
    child,
    ask: (line) => {
      const answer = next();
      if (line !== undefined) child.stdin.write(`${line}\n`);
      return answer;
    },
  };
}

// The nodes, with the pod CIDR kwok hands addresses from and the address their runner has.
status(`creating ${NODES} nodes`);
const nodes = Array.from({ length: NODES }, (_, i) => ({ name: nodeName(i), ip: nodeIp(i) }));
await inBatches(nodes, CREATE_CONCURRENCY, (n, i) =>
  apiRequest(api, "POST", "/api/v1/nodes", {
    contentType: "application/json",
    value: {
      metadata: { name: n.name, labels: { type: "kwok" }, annotations: { "kwok.x-k8s.io/node": "fake", "bench.podnet.github.io/internal-ip": n.ip } },
      spec: { podCIDR: `10.${(i >> 8) & 255}.${i & 255}.0/24`, podCIDRs: [`10.${(i >> 8) & 255}.${i & 255}.0/24`] },
    },
  }),
);
const nodesFile = path.join(scratch.dir, "nodes.json");
writeFileSync(nodesFile, JSON.stringify(nodes));
const kwok = spawn(
  BIN.kwok,
  [
    `--kubeconfig=${cp.writeKubeconfig("kwok", cp.adminToken)}`,
    `--config=${path.join(root, "bench/kwok-stages.yaml")}`,
    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
    "--node-lease-duration-seconds=0",
  ],
  { stdio: ["ignore", "ignore", "pipe"] },
);
let kwokLog = "";
kwok.stderr.on("data", (c: Buffer) => {
  kwokLog = (kwokLog + c.toString()).slice(-20_000);
});
teardown.add(() => kwok.kill());
started.push({ name: "kwok", process: kwok, log: () => kwokLog });
await until(`${NODES} nodes Ready (kwok)`, 120_000, async () => {
  let ready = 0;
  for await (const n of apiListAll(api, "/api/v1/nodes", {}, 500)) {
    const conditions = (n as { status?: { conditions?: { type: string; status: string }[] } }).status?.conditions ?? [];
    if (conditions.some((c) => c.type === "Ready" && c.status === "True")) ready++;
  }
  return ready === NODES;
});

// The node-runners, the function, the adapter.
const keys = signingKeyDirs(scratch.dir);
const tls = nodeRunnerTls();
const recordFile = path.join(scratch.dir, "programmed.jsonl");
const runners = startChild(process.execPath, ["--import", "tsx", path.join(root, "bench/scale-node-runners.ts")], {
  NODES_FILE: nodesFile,
  PUBLIC_KEYS_DIR: keys.publicDir,
  API_SERVER: cp.server,
  API_CA_FILE: cp.caFile,
  API_TOKEN: cp.adminToken,
  TLS_CERT_FILE: tls.certFile,
  TLS_KEY_FILE: tls.keyFile,
  RECORD_FILE: recordFile,
});
teardown.add(() => runners.child.kill());
const runnerPort = (await runners.ask()).port ?? 0;
const policyFile = path.join(scratch.dir, "policy.yaml");
writeFileSync(policyFile, "mode: enforce\n");
// Its log, whole: each pod's `dispatched` line says where the pod waited (the churn's stages).
const fnLogFile = path.join(scratch.dir, "function.log");
const fn = await startFunction(cp, {
  logFile: fnLogFile,
  signingKeysDir: keys.privateDir,
  policyFile,
  nodeRunnerPort: runnerPort,
  nodeRunnerAddress: null,
  compiled: { nodeArgs: v8.function },
});
teardown.add(() => fn.stop());
started.push({ name: "the function", process: fn.process, log: () => fn.log() });
teardown.add(() => {
  report();
});
const fnPid = fn.process.pid;
for (let i = 0; i < NAMESPACES; i++) await cp.ensureNamespace(namespaceOf(i));
const adapter = await cp.startAdapter({
  sink: `${fn.url}/`,
  labelSelector: MESH_POD_SELECTOR,
  audience: FUNCTION_AUDIENCE,
  ...(flags["watch-per-namespace"] ? { namespaces: Array.from({ length: NAMESPACES }, (_, i) => namespaceOf(i)) } : {}),
});
teardown.add(() => adapter.stop());
const adapterPid = pidsWhere((c) => c.startsWith(BIN.adapter))[0];
const resyncToken = await senderToken(cp, "PingSource");

// One mesh pod as Istio's real injector renders it with the project's template.
const injector = renderInjector(scratch.dir);
const template = kubeInject(injector, {
  metadata: { name: "app", namespace: "scale-0", labels: { app: "shop" }, annotations: { "inject.istio.io/templates": "sidecar,podnet" } },
  spec: { containers: [{ name: "app", image: "example/app:1", ports: [{ containerPort: 8080 }] }] },
}) as { metadata: Record<string, unknown>; spec: Record<string, unknown> };
const podBytes = JSON.stringify(template).length;

let created = 0;
function podBody(name: string, i: number, settled: boolean): unknown {
  const annotations = (template.metadata.annotations ?? {}) as Record<string, string>;
  return {
    metadata: {
      ...template.metadata,
      name,
      namespace: namespaceOf(i),
      // A settled pod carries its mark from the start (no admission policy here to refuse it).
      ...(settled
        ? {
            annotations: { ...annotations, [SETTLED]: "true", [MARK.status]: STATUS_INITIALIZED, [MARK.netns]: "4026532000", [MARK.rules]: "0123456789abcdef" },
          }
        : {}),
    },
    spec: { ...template.spec, nodeName: nodeName(i % NODES) },
  };
}
/** A settled pod's status, as its kubelet would have written it by now: Running, its waiter done. */
function settledStatus(i: number): unknown {
  const now = new Date().toISOString();
  const spec = template.spec as { initContainers?: { name: string; image: string }[]; containers: { name: string; image: string }[] };
  const ip = `10.${128 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  const done = { terminated: { exitCode: 0, reason: "Completed", startedAt: now, finishedAt: now } };
  return {
    status: {
      phase: "Running",
      hostIP: nodeIp(i % NODES),
      hostIPs: [{ ip: nodeIp(i % NODES) }],
      podIP: ip,
      podIPs: [{ ip }],
      startTime: now,
      conditions: ["Initialized", "Ready", "ContainersReady"].map((type) => ({ type, status: "True", lastTransitionTime: now })),
      initContainerStatuses: (spec.initContainers ?? []).map((c) => ({ name: c.name, image: c.image, ready: true, restartCount: 0, state: done })),
      containerStatuses: spec.containers.map((c) => ({
        name: c.name,
        image: c.image,
        ready: true,
        started: true,
        restartCount: 0,
        state: { running: { startedAt: now } },
      })),
    },
  };
}
/** Create these pods, at most `rate` a second. */
async function createPods(names: readonly { name: string; i: number }[], rate: number): Promise<void> {
  const start = performance.now();
  await inBatches(names, CREATE_CONCURRENCY, async ({ name, i }, k) => {
    const at = start + (k * 1000) / rate - performance.now();
    if (at > 0) await sleep(at);
    const settled = i >= KWOK_PODS && !name.startsWith("churn-");
    await apiRequest(api, "POST", `/api/v1/namespaces/${namespaceOf(i)}/pods`, { contentType: "application/json", value: podBody(name, i, settled) });
    if (settled)
      await apiRequest(api, "PATCH", `/api/v1/namespaces/${namespaceOf(i)}/pods/${name}/status`, {
        contentType: "application/merge-patch+json",
        value: settledStatus(i),
      });
  });
}

async function apiServerMetrics(): Promise<string> {
  return scrapeMetrics(`${cp.server}/metrics`, { ca: cp.ca, token: cp.adminToken });
}
/** The API server's LIST calls of pods and the bytes it answered them with, so far. */
function podLists(text: string): { requests: number; bytes: number } {
  const isPodList = (l: Record<string, string>): boolean => l.verb === "LIST" && l.resource === "pods" && (l.subresource ?? "") === "";
  const sum = (name: string): number =>
    metricSeries(text, name)
      .filter((s) => isPodList(s.labels))
      .reduce((a, s) => a + s.value, 0);
  return { requests: sum("apiserver_request_total"), bytes: sum("apiserver_response_sizes_sum") };
}
const fnMetric = async (name: string): Promise<number> => metricSum(await fn.metrics(), name);
const mib = (n: number): string => n.toFixed(1);
const rssMiB = (pid: number | undefined): number => statusMiB(pid, "VmRSS");

/** The function's anonymous memory now, by owner: the V8 heap (committed, and in use), external buffers, the rest (allocator, TLS, threads). */
interface FunctionMemory {
  anon: number;
  heapCommitted: number;
  heapUsed: number;
  external: number;
}
async function functionMemory(): Promise<FunctionMemory> {
  const text = await fn.metrics(); // the gauges are read as the scrape is answered
  const mibOf = (name: string): number => metricSum(text, `podnet_function_nodejs_${name}`) / 2 ** 20;
  return {
    anon: statusMiB(fnPid, "RssAnon"),
    heapCommitted: mibOf("heap_size_total_bytes"),
    heapUsed: mibOf("heap_size_used_bytes"),
    external: mibOf("external_memory_bytes"),
  };
}
const memoryText = (m: FunctionMemory): string =>
  `${mib(m.anon)} = ${mib(m.heapCommitted)} (${mib(m.heapUsed)}) + ${mib(m.external)} + ${mib(m.anon - m.heapCommitted - m.external)}`;

/** Whether the adapter, kwok and the ticks are paused (pauseOthers). */
const paused = { now: false };
/** The PingSource: a resync tick every interval, one at a time; the pods each queued (not marked at that moment: lost events, or still on their way) are counted. */
let caughtByResync = 0;
/** The tick being delivered, if one is: a measurement waits for it (two resyncs at once would be counted as one). */
let tickInFlight: Promise<unknown> = Promise.resolve();
const stopTicks = new AbortController();
const ticker = (async () => {
  for (;;) {
    const next = Date.now() + RESYNC_INTERVAL_S * 1000;
    while (!stopTicks.signal.aborted && Date.now() < next) await sleep(250);
    if (stopTicks.signal.aborted) return;
    if (paused.now) continue;
    const delivery = deliver(`${fn.url}/`, pingEvent(), resyncToken).catch(() => undefined);
    tickInFlight = delivery;
    const answer = await delivery;
    caughtByResync += (answer?.body.resync as { queued?: number } | undefined)?.queued ?? 0;
  }
})();
teardown.add(async () => {
  stopTicks.abort();
  await ticker;
});
/** Stop (SIGSTOP) or continue the adapter and kwok, and hold the resync ticks meanwhile. */
function pauseOthers(pause: boolean): void {
  paused.now = pause;
  for (const pid of [adapterPid, kwok.pid]) if (pid !== undefined) process.kill(pid, pause ? "SIGSTOP" : "SIGCONT");
}
// A stopped process would not end on SIGTERM: continued first.
teardown.add(() => {
  if (paused.now) pauseOthers(false);
});
/** How often the API server closed the adapter's watch since it started because the adapter fell behind. */
function adapterWatchCloses(): number {
  const log = readFileSync(path.join(cp.dir, "kube-apiserver.log"), "utf8");
  return [...log.matchAll(/Forcing pods watcher close due to unresponsiveness: key: "\/pods\/", labels: "([^"]*)"/g)].filter((m) => m[1] === MESH_POD_SELECTOR)
    .length;
}

interface SizeRow {
  pods: number;
  fillS: number;
  events: number;
  eventsPerS: number;
  cpuMsPerEvent: number;
  watchCloses: number;
  caught: number;
  fnPeak: number;
  fnNow: number;
  fnMemory: FunctionMemory;
  adapterPeak: number;
  resyncS: number;
  resyncSeen: number;
  resyncRequests: number;
  resyncMiB: number;
  floorS: number;
  floorRequests: number;
  floorMiB: number;
}
const sizes: SizeRow[] = [];
let churnReport = "";
try {
  status(`one mesh pod is ${podBytes} bytes of JSON as the injector renders it`);
  for (const target of POD_COUNTS) {
    if (target <= created) continue;
    const events0 = await fnMetric("podnet_function_events_total");
    const closes0 = adapterWatchCloses();
    const caught0 = caughtByResync;
    const cpu0 = cpuSeconds(fnPid);
    const t0 = performance.now();
    status(`creating pods ${created}…${target - 1}, ${CREATE_RATE} a second`);
    await createPods(
      Array.from({ length: target - created }, (_, k) => ({ name: `app-${created + k}`, i: created + k })),
      CREATE_RATE,
    );
    created = target;
    await until(
      `${target} pods marked`,
      30 * 60_000,
      async () => ((await runners.ask("stats")).pods ?? 0) >= Math.min(target, KWOK_PODS) && (await fnMetric("podnet_function_dispatch_queue_pods")) === 0,
    );
    const fillS = (performance.now() - t0) / 1000;
    // The adapter sends each pod's later updates too (Running after the mark): let them arrive.
    await settleEvents();
    const events = (await fnMetric("podnet_function_events_total")) - events0;
    const cpu = cpuSeconds(fnPid) - cpu0;

    const watchCloses = adapterWatchCloses() - closes0;
    status(`resync of ${target} pods`);
    // Measured with the adapter, kwok and the ticks paused: the API server's counts are then the resync's and the floor's alone.
    pauseOthers(true);
    await tickInFlight;
    await sleep(1000);
    const before = podLists(await apiServerMetrics());
    const r0 = performance.now();
    const answer = await deliver(`${fn.url}/`, pingEvent(), resyncToken);
    const resyncS = (performance.now() - r0) / 1000;
    const after = podLists(await apiServerMetrics());
    const seen = (answer.body.resync as { seen?: number } | undefined)?.seen ?? NaN;
    // Its floor: the same paginated list, streamed, by the benchmark.
    const f0 = performance.now();
    let listed = 0;
    for await (const _pod of apiListAll(api, "/api/v1/pods", { labelSelector: MESH_POD_SELECTOR }, 500, { deadlineMs: 60_000 })) listed++;
    const floorS = (performance.now() - f0) / 1000;
    const floor = podLists(await apiServerMetrics());
    pauseOthers(false);
    if (listed !== target) status(`the floor listed ${listed} pods, not ${target}`);
    sizes.push({
      pods: target,
      fillS,
      events,
      eventsPerS: events / fillS,
      cpuMsPerEvent: (cpu * 1000) / events,
      watchCloses,
      caught: caughtByResync - caught0,
      fnPeak: peakRssMiB(fnPid),
      fnNow: rssMiB(fnPid),
      fnMemory: await functionMemory(),
      adapterPeak: peakRssMiB(adapterPid),
      resyncS,
      resyncSeen: seen,
      resyncRequests: after.requests - before.requests,
      resyncMiB: (after.bytes - before.bytes) / 2 ** 20,
      floorS,
      floorRequests: floor.requests - after.requests,
      floorMiB: (floor.bytes - after.bytes) / 2 ** 20,
    });
    status(`measured at ${target} pods: ${JSON.stringify(sizes[sizes.length - 1])}`);
  }
  if (CHURN_SECONDS > 0 && CHURN_RATE > 0) churnReport = await churn();
} catch (err) {
  console.error(err);
  console.error(`kwok's last lines:\n${kwokLog.slice(-3000)}`);
  console.error(`the function's last lines:\n${fn.log().slice(-3000)}`);
  process.exitCode = 1;
} finally {
  report();
  await teardown.run();
}

/** Churn: R pods created and R of the oldest deleted each second; IP → dispatch of the new ones. */
async function churn(): Promise<string> {
  status(`churn: ${CHURN_RATE} pods/s created and deleted for ${CHURN_SECONDS} s`);
  const ipAt = new Map<string, number>(); // uid → epoch ms its IP was first seen
  const fnBefore = rssMiB(fnPid);
  const listed = (await apiRequest(api, "GET", `/api/v1/pods?limit=1&labelSelector=${encodeURIComponent(MESH_POD_SELECTOR)}`)) as {
    metadata: { resourceVersion: string };
  };
  const watch = await new k8s.Watch(cp.kubeConfig()).watch(
    "/api/v1/pods",
    { labelSelector: MESH_POD_SELECTOR, resourceVersion: listed.metadata.resourceVersion, allowWatchBookmarks: false },
    (_type, pod: k8s.V1Pod) => {
      const uid = pod.metadata?.uid ?? "";
      if ((pod.metadata?.name ?? "").startsWith("churn-") && pod.status?.podIP !== undefined && !ipAt.has(uid)) ipAt.set(uid, Date.now());
    },
    () => undefined,
  );
  let deleted = 0;
  const deletions: Promise<unknown>[] = [];
  const churned: { name: string; i: number }[] = [];
  const start = performance.now();
  for (let second = 0; second < CHURN_SECONDS; second++) {
    const batch = Array.from({ length: CHURN_RATE }, (_, k) => ({ name: `churn-${second}-${k}`, i: created + second * CHURN_RATE + k }));
    churned.push(...batch);
    const creating = createPods(batch, CHURN_RATE);
    for (let k = 0; k < CHURN_RATE; k++, deleted++) {
      const i = deleted;
      deletions.push(apiRequest(api, "DELETE", `/api/v1/namespaces/${namespaceOf(i)}/pods/app-${i}`).catch(() => undefined));
    }
    await creating;
    const behind = start + (second + 1) * 1000 - performance.now();
    if (behind > 0) await sleep(behind);
  }
  const churnS = (performance.now() - start) / 1000;
  await Promise.all(deletions);
  created += churned.length;
  await until(
    "every churned pod marked",
    10 * 60_000,
    async () => (await fnMetric("podnet_function_dispatch_queue_pods")) === 0 && ipAt.size >= churned.length,
  );
  await settleEvents();
  watch.abort();
  await runners.ask("record");
  const markedAt = new Map(
    readFileSync(recordFile, "utf8")
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as { uid: string; at: number; rules: string[] })
      .map((r) => [r.uid, r] as const),
  );
  const latencies = [...ipAt].map(([uid, at]) => (markedAt.get(uid)?.at ?? NaN) - at);
  const stats = await runners.ask("stats");
  // Pods left unmarked: every mesh pod there is now, read.
  let unmarked = 0;
  let total = 0;
  for await (const item of apiListAll(api, "/api/v1/pods", { labelSelector: MESH_POD_SELECTOR }, 500, { deadlineMs: 60_000 })) {
    total++;
    const meta = (item as { metadata?: { annotations?: Record<string, string>; deletionTimestamp?: string } }).metadata;
    if (meta?.deletionTimestamp === undefined && meta?.annotations?.[MARK.status] === undefined) unmarked++;
  }
  const s = summarize(latencies.filter((l) => Number.isFinite(l)));
  const stages = churnStages(ipAt, markedAt);
  const fnAfter = await functionMemory();
  return [
    `Churn at ${total} pods on ${NODES} nodes: ${churned.length} created and ${deleted} deleted in ${churnS.toFixed(1)} s (${(churned.length / churnS).toFixed(1)} pods/s each way)`,
    table(
      [
        "IP → dispatch",
        "p50 ms",
        "p99 ms",
        "max ms",
        "pods",
        "not dispatched",
        "pods left unmarked",
        "programmed twice, different rules",
        "function RSS before → after (MiB)",
      ],
      [
        [
          "churned pods",
          s.median.toFixed(0),
          s.p99.toFixed(0),
          s.max.toFixed(0),
          String(latencies.length),
          String(latencies.filter((l) => !Number.isFinite(l)).length),
          String(unmarked),
          String(stats.conflicting ?? NaN),
          `${mib(fnBefore)} → ${mib(rssMiB(fnPid))}`,
        ],
      ],
    ),
    `the function's anonymous memory after the churn = V8 heap committed (in use) + external + the rest: ${memoryText(fnAfter)} MiB`,
    stages,
  ].join("\n");
}

/**
 * Where the churned pods waited, from each one's first `dispatched` line in the function's log
 * (its time, less `sendMs`, `queuedMs` and `decidedMs`): IP → its event's arrival in the
 * function (the adapter's watch and send), the arrival → decided and queued (the function's read
 * of the pod), in the function's queue, and sent → its node-runner verified it. They add up to
 * the pod's IP → dispatch.
 */
function churnStages(ipAt: ReadonlyMap<string, number>, markedAt: ReadonlyMap<string, { at: number }>): string {
  const pods: { total: number; arrived: number; decided: number; queued: number; toRunner: number }[] = [];
  const seen = new Set<string>();
  for (const line of readFileSync(fnLogFile, "utf8").split("\n")) {
    if (!line.includes('"msg":"dispatched: ')) continue;
    let entry: { time: number; pod?: { uid?: string }; decidedMs?: number; queuedMs: number; sendMs: number };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue; // a line its stderr broke into
    }
    const uid = entry.pod?.uid ?? "";
    const ip = ipAt.get(uid);
    const marked = markedAt.get(uid);
    if (ip === undefined || marked === undefined || seen.has(uid)) continue;
    seen.add(uid);
    const sentAt = entry.time - entry.sendMs;
    // A pod queued by a resync tick, not by its event, has no decidedMs: its stages before the queue are one.
    const decided = entry.decidedMs ?? NaN;
    const arrived = sentAt - entry.queuedMs - (entry.decidedMs ?? 0) - ip;
    pods.push({ total: marked.at - ip, arrived, decided, queued: entry.queuedMs, toRunner: marked.at - sentAt });
  }
  const slowest = [...pods].sort((a, b) => b.total - a.total).slice(0, Math.max(1, Math.ceil(pods.length / 100)));
  const row = (name: string, of: (p: (typeof pods)[number]) => number): string[] => {
    const known = (list: typeof pods): number[] => list.map(of).filter((ms) => Number.isFinite(ms));
    const all = summarize(known(pods));
    return [name, all.median.toFixed(0), all.p99.toFixed(0), all.max.toFixed(0), summarize(known(slowest)).median.toFixed(0)];
  };
  return [
    `Where the churned pods waited (${pods.length} with a dispatched line in the function's log; the slowest 1%: ${slowest.length} pods by IP → dispatch):`,
    table(
      ["stage", "p50 ms", "p99 ms", "max ms", "the slowest 1%: median ms"],
      [
        row("IP → its event's arrival in the function (the adapter's watch and send)", (p) => p.arrived),
        row("arrival → decided and queued (the function's read of the pod)", (p) => p.decided),
        row("in the function's queue", (p) => p.queued),
        row("sent → its node-runner verified it", (p) => p.toRunner),
        row("IP → dispatch (the sum)", (p) => p.total),
      ],
    ),
  ].join("\n");
}

/** Wait until the function has received no event for two seconds. */
async function settleEvents(): Promise<void> {
  let last = await fnMetric("podnet_function_events_total");
  for (;;) {
    await sleep(2000);
    const now = await fnMetric("podnet_function_events_total");
    if (now === last) return;
    last = now;
  }
}

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    // A component that died ends the run at once, with what it said last.
    const died = started.find((c) => c.process.exitCode !== null);
    if (died !== undefined) throw new Error(`${died.name} exited (${died.process.exitCode}):\n${died.log().slice(-3000)}`);
    if (Date.now() > deadline) throw new Error(`bench:scale: not ${what} after ${timeoutMs / 1000} s`);
    await sleep(500);
  }
}

async function inBatches<T>(items: readonly T[], concurrency: number, each: (item: T, index: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const index = next++;
        await each(items[index] as T, index);
      }
    }),
  );
}

/** The tables, once: at the end, or when the run is interrupted or fails. */
function report(): void {
  if (reported) return;
  reported = true;
  const heap = v8.function.find((f) => f.startsWith("--max-old-space-size="))?.split("=")[1] ?? "?";
  const watches = flags["watch-per-namespace"] ? `a watch per namespace (${NAMESPACES})` : "one watch for every namespace";
  console.log(
    `\nbench:scale — ${NODES} nodes simulated by kwok, ${NAMESPACES} namespaces, pods of ${podBytes} bytes (Istio's injector); the adapter: ${watches}; pods past ${KWOK_PODS} created settled (programmed and Running) by the benchmark, not played by kwok`,
  );
  console.log(machineDescription());
  console.log(
    table(
      [
        "pods",
        "all marked (s)",
        "events",
        "events/s",
        "function CPU ms/event",
        "adapter's watch closed (behind)",
        "pods a resync tick queued (unmarked then)",
        `function RSS peak / now (MiB; heap ${heap} MB)`,
        "function anonymous now = V8 heap committed (in use) + external + the rest (MiB)",
        "adapter RSS peak (MiB)",
      ],
      sizes.map((r) => [
        String(r.pods),
        r.fillS,
        String(r.events),
        r.eventsPerS.toFixed(0),
        r.cpuMsPerEvent,
        String(r.watchCloses),
        String(r.caught),
        `${mib(r.fnPeak)} / ${mib(r.fnNow)}`,
        memoryText(r.fnMemory),
        mib(r.adapterPeak),
      ]),
    ),
  );
  console.log(
    table(
      [
        "pods",
        "resync (s)",
        `of its interval (${RESYNC_INTERVAL_S} s)`,
        "pods seen",
        "LIST requests",
        "MiB sent",
        "floor: the same list (s)",
        "floor requests",
        "floor MiB",
        "resync / floor bytes",
      ],
      sizes.map((r) => [
        String(r.pods),
        r.resyncS,
        `${((100 * r.resyncS) / RESYNC_INTERVAL_S).toFixed(1)}%`,
        String(r.resyncSeen),
        String(r.resyncRequests),
        r.resyncMiB,
        r.floorS,
        String(r.floorRequests),
        r.floorMiB,
        r.resyncMiB / r.floorMiB,
      ]),
    ),
  );
  if (churnReport !== "") console.log(churnReport);
}
