// Benchmark: pods through the whole system (kube-apiserver → Knative's ApiServerSource adapter →
// decision function → node-runner → rules in real network namespaces → annotation), with both
// components compiled and run with their manifests' V8 flags, optionally with N idle processes
// on the machine (a busy node).
//
//   npm run bench:e2e -- burst [pods] [--processes N]
//     The pods and their sandboxes are made first; then every pod's IP appears in its status at
//     once, as a node hands out addresses in a burst. Per pod: IP → rules applied, IP → mark;
//     the last mark; when the node-runner's Events (which wait for the burst to end) are in; the
//     peak memory of each component. Its floor: the same four API requests per pod before its
//     mark (IP, read, the node-runner's identity check, annotation) made by the benchmark alone for as many other pods.
//   npm run bench:e2e -- single [pods] [--processes N]
//     One pod at a time, its waiter (the Go binary of the waiter image, UID 1337, in the pod's netns)
//     already waiting when the IP appears: IP → rules applied, IP → waiter exit. Its floor: the
//     waiter in a namespace whose rules are already in place (start → exit, the probe passing
//     at once), measured on the same pods.
// Needs root and the control plane.
import { execFileSync, type ChildProcess } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { apiRequest, podPath, type ApiConnection } from "../lib/kube-http.ts";
import * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { missingBinariesReason } from "../test/controlplane/harness.ts";
import { metricSeries, metricSum, scrapeMetrics } from "../test/support/metrics.ts";
import { cpuSeconds, peakRssMiB, pidsWhere } from "../test/support/processes.ts";
import { STACK_NODE, startStack } from "../test/support/stack.ts";
import { testPodsUnavailableReason, type TestPod } from "../test/support/test-pods.ts";
import { goProgram } from "../test/support/go-programs.ts";
import { idleProcesses, machineDescription, processCount, summarize, table, Teardown } from "./machine.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
if (unavailable !== undefined) {
  console.error(`bench:e2e: ${unavailable}`);
  process.exit(1);
}
const { values: flags, positionals } = parseArgs({ allowPositionals: true, options: { processes: { type: "string", default: "0" } } });
const mode = positionals[0] ?? "burst";
if (mode !== "burst" && mode !== "single") {
  console.error("usage: npm run bench:e2e -- burst|single [pods] [--processes N]");
  process.exit(64);
}
const count = Number(positionals[1] ?? (mode === "burst" ? "200" : "20"));
const extraProcesses = Number(flags.processes);
const NS = "burst";
const root = path.resolve(import.meta.dirname, "..");

/** The API server's requests so far, by verb, resource and status code (its apiserver_request_total). */
async function apiServerRequests(server: string, ca: Buffer, token: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const { labels, value } of metricSeries(await scrapeMetrics(server, { ca, token }), "apiserver_request_total")) {
    if ((labels.resource ?? "") === "") continue; // /metrics, /healthz and the like
    const key = `${labels.verb ?? ""} ${labels.resource ?? ""}${(labels.subresource ?? "") === "" ? "" : `/${labels.subresource ?? ""}`} ${labels.code ?? ""}`;
    counts.set(key, (counts.get(key) ?? 0) + value);
  }
  return counts;
}

/** The sum of one of a component's metrics, every label set. */
async function metric(component: { metrics(): Promise<string> }, name: string): Promise<number> {
  return metricSum(await component.metrics(), name);
}

// What the images run: compiled JavaScript and the waiter binary.
execFileSync("npm", ["run", "--silent", "build"], { cwd: root, stdio: "inherit" });
const WAITER = goProgram("podnet-wait");
const teardown = new Teardown();
const idle = await idleProcesses(extraProcesses);
teardown.add(() => {
  idle.stop();
});
const scratch = mkdtempSync(path.join(os.tmpdir(), "pnct-bench-e2e-"));
teardown.add(() => {
  rmSync(scratch, { recursive: true, force: true });
});
chmodSync(scratch, 0o755);
const stack = await startStack({ compiled: true, log: (l) => process.stderr.write(`${l}\n`) });
teardown.add(() => stack.stop());
// The load generator's own calls (IPs, the mark watch) go through the project's small client:
// @kubernetes/client-node costs about a CPU-second more in a 200-pod burst, on the same cores.
const api: ApiConnection = { server: new URL(stack.cp.server), ca: stack.cp.ca, token: () => stack.cp.adminToken };
try {
  await stack.cp.ensureNamespace(NS);
  const names = Array.from({ length: count }, (_, i) => `${mode}-${i}`);
  const ipAt = new Map<string, number>(); // epoch ms: the IP appeared in the pod status
  const markedAt = new Map<string, number>(); // epoch ms: the mark was seen
  const waiterExitAt = new Map<string, number>();
  const waiterFloorMs: number[] = [];

  async function createPod(name: string): Promise<TestPod> {
    const created = await stack.core.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: { name, labels: { "security.istio.io/tlsMode": "istio" }, annotations: { "sidecar.istio.io/status": '{"containers":["istio-proxy"]}' } },
        spec: {
          nodeName: STACK_NODE,
          containers: [
            { name: "app", image: "example/app" },
            { name: "istio-proxy", image: "istio/proxyv2" },
          ],
        },
      },
    });
    return stack.pods.add({ name, uid: created.metadata?.uid ?? "" });
  }

  // The IP appears when the API server has stored it: the answer to the status patch.
  const storeIp = (name: string, ip: string): Promise<unknown> =>
    apiRequest(api, "PATCH", `${podPath(NS, name)}/status`, {
      contentType: "application/merge-patch+json",
      value: { status: { podIP: ip, podIPs: [{ ip }], hostIP: "127.0.0.1" } },
    });
  const giveIp = async (name: string, ip: string): Promise<void> => {
    await storeIp(name, ip);
    ipAt.set(name, Date.now());
  };

  /**
   * The burst's floor: the API work of the system's four requests per pod before its mark,
   * without the system. For as many other pods (no mesh label: the adapter sends nothing for
   * them), the benchmark itself stores the IP, reads the pod, patches nothing but the UID
   * precondition (the node-runner's identity check) and patches an annotation of its own, every pod at once through its 8 connections. What the API server, etcd and the
   * watches cost on this machine for that work alone. (The node-runner's Event per pod follows
   * once the burst is over: not in the window, not in the floor.)
   */
  async function apiFloor(): Promise<{ lastMs: number; cpu: Record<string, number> }> {
    const floorNames = names.map((name) => `floor-${name}`);
    const uids = new Map<string, string | undefined>();
    for (const name of floorNames) {
      const created = await stack.core.createNamespacedPod({
        namespace: NS,
        body: { metadata: { name }, spec: { nodeName: STACK_NODE, containers: [{ name: "app", image: "example/app" }] } },
      });
      uids.set(name, created.metadata?.uid);
    }
    const before = cpu();
    const start = Date.now();
    let last = start;
    await Promise.all(
      floorNames.map(async (name, i) => {
        const ip = `10.252.${Math.floor(i / 250)}.${(i % 250) + 1}`;
        await storeIp(name, ip);
        await apiRequest(api, "GET", podPath(NS, name));
        await apiRequest(api, "PATCH", podPath(NS, name), { contentType: "application/merge-patch+json", value: { metadata: { uid: uids.get(name) } } });
        await apiRequest(api, "PATCH", podPath(NS, name), {
          contentType: "application/merge-patch+json",
          value: { metadata: { annotations: { "bench.podnet.example/floor": "done" } } },
        });
        last = Math.max(last, Date.now());
      }),
    );
    const after = cpu();
    return { lastMs: last - start, cpu: Object.fromEntries(Object.keys(after).map((k) => [k, (after[k] ?? 0) - (before[k] ?? 0)])) };
  }

  /** The waiter as the init container runs it; resolves with its exit time (epoch ms) and code. */
  function startWaiter(pod: TestPod): { child: ChildProcess; waiting: Promise<void>; exit: Promise<{ at: number; code: number | null }> } {
    const annotations = path.join(scratch, `annotations-${pod.uid}`);
    writeFileSync(annotations, ""); // the kubelet's file, not refreshed: the probe is the signal
    const child = pod.spawn([WAITER, `--annotations=${annotations}`, "--timeout=60", "--termination-log=/dev/null"], { uid: 1337, gid: 1337 });
    const waiting = new Promise<void>((resolve) => {
      child.stderr?.on("data", (c: Buffer) => {
        if (c.toString().includes("waiting:")) resolve();
      });
    });
    const exit = new Promise<{ at: number; code: number | null }>((resolve) =>
      child.once("exit", (code) => {
        resolve({ at: Date.now(), code });
      }),
    );
    return { child, waiting, exit };
  }

  // Marks, from a watch that is reopened whenever it ends.
  let finished = false;
  const markWaiters = new Map<string, () => void>();
  const open = (): void => {
    void new k8s.Watch(stack.cp.kubeConfig()).watch(
      `/api/v1/namespaces/${NS}/pods`,
      {},
      (_type: string, pod: k8s.V1Pod) => {
        const name = pod.metadata?.name ?? "";
        if (pod.metadata?.annotations?.[MARK.status] === STATUS_INITIALIZED && !markedAt.has(name)) {
          markedAt.set(name, Date.now());
          markWaiters.get(name)?.();
          if (markedAt.size === count) markWaiters.get("*")?.();
        }
      },
      () => {
        if (!finished) open();
      },
    );
  };
  open();
  // Unreferenced: a wait that is over must not keep the benchmark alive once it is done.
  const giveUpAfter = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      setTimeout(resolve, ms).unref();
    });
  const marked = (name: string): Promise<void> => (markedAt.has(name) ? Promise.resolve() : new Promise((resolve) => markWaiters.set(name, resolve)));
  const functionEvents = (): Promise<number> => metric(stack.fn, "podnet_function_events_total");
  let eventsBefore = await functionEvents();

  // CPU used during the run, by component (the node's two cores are shared by all of them).
  const components = {
    "kube-apiserver": () => pidsWhere((c) => c.includes("kube-apiserver")),
    etcd: () => pidsWhere((c) => c.startsWith("/") && c.includes("etcd\0")),
    adapter: () => pidsWhere((c) => c.includes("apiserver_receive_adapter")),
    function: () => [stack.fn.process.pid ?? -1],
    "node-runner": () => [stack.runner.process.pid ?? -1],
    "its command helper (with iptables)": () => pidsWhere((c) => c.includes("podnet-netns-exec")),
    // The load generator shares the two cores: what it spends is not the system's, but slows it.
    "this benchmark (IPs, watches)": () => [process.pid],
  };
  const cpu = (): Record<string, number> =>
    Object.fromEntries(Object.entries(components).map(([name, pids]) => [name, pids().reduce((sum, pid) => sum + (cpuSeconds(pid) || 0), 0)]));
  const requests = (): Promise<Map<string, number>> => apiServerRequests(stack.cp.server, stack.cp.ca, stack.cp.adminToken);
  let requestsBefore = await requests();
  let cpuBefore = cpu();
  let t0 = Date.now();
  if (mode === "burst") {
    process.stderr.write(`creating ${count} pods and sandboxes (no IP yet: the function skips them)\n`);
    const pods = new Map<string, TestPod>();
    for (const name of names) pods.set(name, await createPod(name));
    process.stderr.write(`${count} IPs appear at once\n`);
    // The window starts here: the pods' add events (skipped, no IP yet) are not the burst's.
    eventsBefore = await functionEvents();
    requestsBefore = await requests();
    cpuBefore = cpu();
    t0 = Date.now();
    const all = new Promise<void>((resolve) => markWaiters.set("*", resolve));
    await Promise.all(names.map((name) => giveIp(name, pods.get(name)?.ip ?? "")));
    await Promise.race([all, giveUpAfter(180_000)]);
  } else {
    for (const name of names) {
      const pod = await createPod(name);
      const waiter = startWaiter(pod);
      await waiter.waiting;
      await giveIp(name, pod.ip);
      const done = await waiter.exit;
      if (done.code === 0) waiterExitAt.set(name, done.at);
      await Promise.race([marked(name), giveUpAfter(10_000)]);
      // The floor: the same waiter where the rules are already in place.
      const started = Date.now();
      const again = await startWaiter(pod).exit;
      if (again.code === 0) waiterFloorMs.push(again.at - started);
    }
  }
  const cpuAfter = cpu();
  const requestsAfter = await requests();
  finished = true;
  const wall = (Date.now() - t0) / 1000;
  const events = (await functionEvents()) - eventsBefore;
  // The node-runner's Events follow the burst: when are they all in (one per pod marked)?
  const eventsCreated = async (): Promise<number> => ((await requests()).get("POST events 201") ?? 0) - (requestsBefore.get("POST events 201") ?? 0);
  const eventsDeadline = Date.now() + 30_000;
  while ((await eventsCreated()) < markedAt.size && Date.now() < eventsDeadline) await new Promise((resolve) => setTimeout(resolve, 100));
  const podEvents = { count: await eventsCreated(), atMs: Date.now() - t0 };
  const floor = mode === "burst" ? await apiFloor() : undefined;
  // Where the time went, from the components' own numbers.
  const mean = async (name: string): Promise<number> => (1000 * (await metric(stack.fn, `${name}_sum`))) / Math.max(1, await metric(stack.fn, `${name}_count`));
  const queueAgeMs = await mean("podnet_function_dispatch_queue_age_seconds");
  const dispatchMs = await mean("podnet_function_dispatch_duration_seconds");
  const runnerMs = [...stack.runner.log().matchAll(/"durationMs":([0-9.]+).*"msg":"apply: applied"/g)].map((m) => Number(m[1]));

  // When each pod's rules were in place: the node-runner's "apply: applied" log line.
  const appliedAt = new Map<string, number>();
  for (const line of stack.runner.log().split("\n")) {
    const m = /"time":(\d+).*"pod":\{"namespace":"burst","name":"([^"]+)".*"msg":"apply: applied"/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined && !appliedAt.has(m[2])) appliedAt.set(m[2], Number(m[1]));
  }
  const since = (to: Map<string, number>): number[] => names.filter((n) => to.has(n)).map((n) => Math.max(0, (to.get(n) ?? 0) - (ipAt.get(n) ?? 0)));
  const row = (name: string, samples: number[]): (string | number)[] => {
    const s = summarize(samples);
    return [name, String(samples.length), s.min, s.median, s.p95, s.p99, s.max];
  };
  console.log(machineDescription());
  console.log(`${processCount()} processes on the machine; node-runner and function compiled, V8 flags from their manifests`);
  if (mode === "burst") {
    const lastMark = Math.max(...[...markedAt.values()]) - t0;
    console.log(
      `${count} pods whose IPs appear at once: ${markedAt.size} marked; last mark ${(lastMark / 1000).toFixed(2)} s after the first IP (${(markedAt.size / (lastMark / 1000)).toFixed(0)} pods/s); ${events} events handled by the function in ${wall.toFixed(1)} s`,
    );
    console.log(
      `the node-runner's Kubernetes Events (they wait until no pod is being programmed): ${podEvents.count} recorded by ${(podEvents.atMs / 1000).toFixed(2)} s after the first IP`,
    );
    if (floor !== undefined) {
      console.log(
        `floor: the same four API requests per pod before its mark made by the benchmark alone (IP, read, identity check, annotation; no adapter, function or node-runner), ${count} other pods at once: last done ${(floor.lastMs / 1000).toFixed(2)} s after the first IP (${(count / (floor.lastMs / 1000)).toFixed(0)} pods/s); CPU seconds: kube-apiserver ${floor.cpu["kube-apiserver"]?.toFixed(2)}, etcd ${floor.cpu.etcd?.toFixed(2)}, this benchmark ${floor.cpu["this benchmark (IPs, watches)"]?.toFixed(2)}`,
      );
    }
  } else {
    console.log(`${count} pods one at a time, each with its waiter already waiting when the IP appears; ${events} events handled by the function`);
  }
  console.log(
    `function: mean wait in its dispatch queue ${queueAgeMs.toFixed(1)} ms, mean queue → node-runner answer ${dispatchMs.toFixed(1)} ms; node-runner: request handled in ${summarize(runnerMs).median} ms median (p95 ${summarize(runnerMs).p95})`,
  );
  const requestsMeanwhile = [...requestsAfter]
    .map(([key, n]): [string, number] => [key, n - (requestsBefore.get(key) ?? 0)])
    .filter(([key, n]) => n > 0 && !key.startsWith("WATCH"))
    .sort((a, b) => b[1] - a[1]);
  console.log(`API server requests meanwhile (verb, resource, status; watches apart): ${requestsMeanwhile.map(([key, n]) => `${key} × ${n}`).join(", ")}`);
  console.log(
    `CPU seconds used meanwhile: ${Object.keys(cpuAfter)
      .map((name) => `${name} ${((cpuAfter[name] ?? 0) - (cpuBefore[name] ?? 0)).toFixed(2)}`)
      .join(", ")}`,
  );
  console.log(
    `peak memory (VmHWM): node-runner ${peakRssMiB(stack.runner.process.pid).toFixed(0)} MiB, function ${peakRssMiB(stack.fn.process.pid).toFixed(0)} MiB\n`,
  );
  console.log(
    table(
      ["ms after the pod's IP appeared", "pods", "min", "median", "p95", "p99", "max"],
      [
        row("rules applied (node-runner)", since(appliedAt)),
        row("pod marked (seen by a watch)", since(markedAt)),
        ...(mode === "single"
          ? [
              row("waiter exit (interception proven in the pod)", since(waiterExitAt)),
              row("  floor: the waiter where the rules are in place (start → exit)", waiterFloorMs),
            ]
          : []),
      ],
    ),
  );
} finally {
  await teardown.run();
}
