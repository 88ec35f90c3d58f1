// Benchmark on the real node (test/support/real-node-stack.ts): pods created through the API
// server until Running, with and without the mesh, 1 at a time and N at once. Per mesh pod the
// time is split into: create → IP (scheduler, kubelet, containerd, CNI, and the kubelet's status
// update: seen on a watch), IP → waiter exit (rules in place, proven by the waiter inside the pod:
// its last log line, CRI-timestamped), IP → node-runner answered (rules applied and the pod
// marked: the node-runner's log line), waiter exit → Running (proxy and app start, the kubelet's
// status). The same pods without the mesh are the floor. Peak RSS of the node-runner (compiled,
// in its container) and the function. Needs root, the control plane, the node and the images.
// With --knative, Knative's own controllers run the function (a Revision with queue-proxy) and
// the adapter (a pod) in that delivery variant (test/support/knative.ts); otherwise both are
// processes in the cluster's network.
//   npm run bench:node -- [pods] [--knative direct|broker]
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import * as k8s from "@kubernetes/client-node";
import { manifestV8Flags } from "../test/support/components.ts";
import { missingKnativeReason } from "../test/support/knative.ts";
import { missingRealNodeReason, podRef, startRealNodeStack, type RealNodeStack } from "../test/support/real-node-stack.ts";
import { machineDescription, summarize, table, Teardown } from "./machine.ts";

const { values, positionals } = parseArgs({ options: { knative: { type: "string" } }, allowPositionals: true });
const delivery = values.knative;
if (delivery !== undefined && delivery !== "direct" && delivery !== "broker") {
  console.error(`bench:node: --knative ${delivery}: direct or broker`);
  process.exit(64);
}
const missing = missingRealNodeReason() ?? (delivery === undefined ? undefined : missingKnativeReason());
if (missing !== undefined) {
  console.error(`bench:node: ${missing}`);
  process.exit(1);
}
const burst = Number(positionals[0] ?? "50");
const NS = "bench";

interface Timeline {
  created: number;
  ip?: number;
  running?: number;
  answered?: number | undefined;
  waiterExit?: number | undefined;
}

/** Watch pods in the namespace (reopened when it ends) and note when each gets an IP and is Running. */
function watchPods(stack: RealNodeStack, timelines: Map<string, Timeline>): () => void {
  let stopped = false;
  let current: { abort: () => void } | undefined;
  const open = async (): Promise<void> => {
    while (!stopped) {
      await new Promise<void>((resolve) => {
        void new k8s.Watch(stack.cp.kubeConfig())
          .watch(
            `/api/v1/namespaces/${NS}/pods`,
            {},
            (_type, pod: k8s.V1Pod) => {
              const t = timelines.get(pod.metadata?.name ?? "");
              if (t === undefined) return;
              const now = Date.now();
              if (t.ip === undefined && pod.status?.podIP !== undefined) t.ip = now;
              if (t.running === undefined && pod.status?.phase === "Running" && pod.status.containerStatuses?.every((c) => c.ready) === true) t.running = now;
            },
            () => {
              resolve();
            },
          )
          .then(
            (req) => {
              current = req;
            },
            () => {
              resolve();
            },
          );
      });
    }
  };
  void open();
  return () => {
    stopped = true;
    current?.abort();
  };
}

/** Rules applied and the pod marked: the node-runner's answer, logged with its `time` (ms). */
async function answeredAt(stack: RealNodeStack): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await stack.runnerLog(100_000)).split("\n")) {
    if (!line.includes('"route":"apply"') || !/"result":"(applied|unchanged)"/.test(line)) continue;
    try {
      const entry = JSON.parse(line) as { time: number; pod?: { name?: string } };
      const name = entry.pod?.name;
      if (name !== undefined && !out.has(name)) out.set(name, entry.time);
    } catch {
      // not a log line of the node-runner's
    }
  }
  return out;
}

/** The waiter's exit: the CRI timestamp of its last log line. */
function waiterExitAt(stack: RealNodeStack, pod: k8s.V1Pod): number | undefined {
  const file = stack.nodeOf(pod).containerLogLines(podRef(pod), "istio-validation");
  const last = file[file.length - 1];
  return last === undefined ? undefined : Date.parse(last.time);
}

async function run(stack: RealNodeStack, label: string, names: string[], mesh: boolean): Promise<Timeline[]> {
  const timelines = new Map<string, Timeline>();
  for (const name of names) timelines.set(name, { created: 0 });
  const stop = watchPods(stack, timelines);
  await new Promise((r) => setTimeout(r, 300)); // the watch is open
  await Promise.all(
    names.map(async (name) => {
      const app = stack.appContainer("server");
      // Istio's sizing annotations: 2 cores hold 50 proxies only with small requests.
      const body: k8s.V1Pod = mesh
        ? stack.meshPod(name, app, { annotations: { "sidecar.istio.io/proxyCPU": "10m", "sidecar.istio.io/proxyMemory": "32Mi" } })
        : { metadata: { name }, spec: { automountServiceAccountToken: false, containers: [app] } };
      const t = timelines.get(name) as Timeline;
      t.created = Date.now();
      await stack.core.createNamespacedPod({ namespace: NS, body });
    }),
  );
  const deadline = Date.now() + 300_000;
  while ([...timelines.values()].some((t) => t.running === undefined) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  stop();
  if (mesh) {
    const answered = await answeredAt(stack);
    for (const [name, t] of timelines) {
      t.answered = answered.get(name);
      t.waiterExit = waiterExitAt(stack, await stack.core.readNamespacedPod({ namespace: NS, name }));
    }
  }
  process.stderr.write(`${label}: ${[...timelines.values()].filter((t) => t.running !== undefined).length}/${names.length} Running\n`);
  await Promise.all(names.map((name) => stack.core.deleteNamespacedPod({ namespace: NS, name, gracePeriodSeconds: 0 })));
  await new Promise((r) => setTimeout(r, 3000));
  return [...timelines.values()];
}

// The function as its image runs it: compiled, with the Knative Service's V8 flags.
execFileSync("npm", ["run", "--silent", "build"], { stdio: "inherit" });
const FUNCTION_V8_FLAGS = manifestV8Flags().function;
const teardown = new Teardown();
const stack = await startRealNodeStack({
  namespaces: [NS],
  ...(delivery === undefined ? { compiledFunction: { nodeArgs: FUNCTION_V8_FLAGS } } : { knative: { delivery } }),
  log: (l) => process.stderr.write(`${l}\n`),
});
teardown.add(() => stack.stop());
try {
  const rows: (string | number)[][] = [];
  const span = (ts: Timeline[], from: keyof Timeline, to: keyof Timeline): string => {
    const d = ts.flatMap((t) => (t[from] !== undefined && t[to] !== undefined ? [t[to] - t[from]] : []));
    if (d.length === 0) return "-";
    const s = summarize(d);
    return `${s.median.toFixed(0)} / ${s.p95.toFixed(0)} / ${s.max.toFixed(0)}`;
  };
  for (const [count, label] of [
    [1, "1 pod"],
    [burst, `${burst} pods at once`],
  ] as const) {
    const plain = await run(
      stack,
      `${label}, no mesh`,
      Array.from({ length: count }, (_, i) => `plain-${count}-${i}`),
      false,
    );
    const mesh = await run(
      stack,
      `${label}, mesh`,
      Array.from({ length: count }, (_, i) => `mesh-${count}-${i}`),
      true,
    );
    rows.push([`${label}, no mesh (floor)`, span(plain, "created", "ip"), "-", "-", "-", span(plain, "created", "running")]);
    rows.push([
      `${label}, mesh`,
      span(mesh, "created", "ip"),
      span(mesh, "ip", "waiterExit"),
      span(mesh, "ip", "answered"),
      span(mesh, "waiterExit", "running"),
      span(mesh, "created", "running"),
    ]);
  }
  const rss = stack.peakRssMiB();
  const out = [
    machineDescription(),
    `real nodes: kubelet, containerd, CNI bridge; node-runner as the DaemonSet (its image, compiled JS, the DaemonSet's V8 flags); ${
      delivery === undefined
        ? `function compiled (${FUNCTION_V8_FLAGS.join(" ")}) and Knative's adapter as processes`
        : `Knative ${delivery} delivery: the function as a Revision (its image, queue-proxy), the adapter as a pod, Traefik as Serving's ingress`
    }`,
    "",
    "ms, median / p95 / max",
    table(["pods", "create → IP", "IP → waiter exit", "IP → node-runner answered", "waiter exit → Running", "create → Running"], rows),
    "",
    table(["process", "peak RSS (MiB)"], [["node-runner (container)", rss.nodeRunner], ...(delivery === undefined ? [["function", rss.fn]] : [])]),
  ].join("\n");
  console.log(out);
  if (process.env.BENCH_OUT !== undefined) writeFileSync(process.env.BENCH_OUT, `${out}\n`);
} finally {
  await teardown.run();
}
