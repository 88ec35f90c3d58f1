// Benchmark: a burst of pods created at once, through the whole system (kube-apiserver →
// Knative's ApiServerSource adapter → decision function → node-runner → rules in real
// network namespaces → annotation). Prints the time to the mark, events per second and the
// peak memory of the node-runner and the function. Needs root and the control plane.
//   npm run bench:e2e -- [pods]
import { readFileSync } from "node:fs";
import * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { missingBinariesReason } from "../test/controlplane/harness.ts";
import { startStack } from "../test/support/stack.ts";
import { testPodsUnavailableReason } from "../test/support/test-pods.ts";
import { machineDescription, summarize, table } from "./machine.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
if (unavailable !== undefined) {
  console.error(`bench:e2e: ${unavailable}`);
  process.exit(1);
}
const count = Number(process.argv[2] ?? "200");
const NS = "burst";

function peakMemoryMiB(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m?.[1] === undefined ? NaN : Number(m[1]) / 1024;
}

async function metric(url: string, name: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return [...text.matchAll(name)].reduce((sum, m) => sum + Number(m[1]), 0);
}

const stack = await startStack({ log: (l) => process.stderr.write(`${l}\n`) });
try {
  await stack.cp.ensureNamespace(NS);
  const created = new Map<string, number>();
  const addressed = new Map<string, number>();
  const marked = new Map<string, number>();

  // Watch for marks (one stream instead of polling every pod).
  const watch = new k8s.Watch(stack.cp.kubeConfig());
  const done = new Promise<void>((resolve) => {
    void watch.watch(`/api/v1/namespaces/${NS}/pods`, {}, (_type: string, pod: k8s.V1Pod) => {
      const name = pod.metadata?.name ?? "";
      if (pod.metadata?.annotations?.[MARK.status] === STATUS_INITIALIZED && !marked.has(name)) {
        marked.set(name, performance.now());
        if (marked.size === count) resolve();
      }
    }, () => undefined);
  });
  const eventsBefore = await metric(stack.fn.url, /podnet_function_events_total\{[^}]*\} (\d+)/g);

  process.stderr.write(`creating ${count} pods at once\n`);
  const t0 = performance.now();
  const names = Array.from({ length: count }, (_, i) => `burst-${i}`);
  // The API objects all at once; each sandbox as soon as its object exists (kubelet's part).
  await Promise.all(
    names.map(async (name) => {
      created.set(name, performance.now());
      await stack.createPod({ namespace: NS, name });
      addressed.set(name, performance.now());
    }),
  );
  const timeout = setTimeout(() => {
    process.stderr.write(`only ${marked.size}/${count} marked after 180 s\n`);
  }, 180_000);
  await Promise.race([done, new Promise((r) => setTimeout(r, 180_000))]);
  clearTimeout(timeout);
  const wall = (performance.now() - t0) / 1000;
  const events = (await metric(stack.fn.url, /podnet_function_events_total\{[^}]*\} (\d+)/g)) - eventsBefore;

  const fromCreate = names.filter((n) => marked.has(n)).map((n) => (marked.get(n) ?? 0) - (created.get(n) ?? 0));
  const fromIp = names.filter((n) => marked.has(n)).map((n) => Math.max(0, (marked.get(n) ?? 0) - (addressed.get(n) ?? 0)));
  const row = (name: string, samples: number[]): (string | number)[] => {
    const s = summarize(samples);
    return [name, String(samples.length), s.min, s.median, s.p95, s.p99, s.max];
  };
  console.log(machineDescription());
  console.log(`${count} pods created at once; ${marked.size} marked in ${wall.toFixed(1)} s; ${events} events handled by the function (${(events / wall).toFixed(0)}/s)`);
  console.log(`peak memory (VmHWM): node-runner ${peakMemoryMiB(stack.runner.process.pid).toFixed(0)} MiB, function ${peakMemoryMiB(stack.fn.process.pid).toFixed(0)} MiB\n`);
  console.log(
    table(["ms until the pod is marked", "pods", "min", "median", "p95", "p99", "max"], [
      row("from the API create call", fromCreate),
      row("from the sandbox's IP in the pod status", fromIp),
    ]),
  );
} finally {
  await stack.stop();
}
