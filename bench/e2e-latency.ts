// Benchmark: a burst of pods through the whole system (kube-apiserver → Knative's
// ApiServerSource adapter → decision function → node-runner → rules in real network
// namespaces → annotation). The pods and their sandboxes are made first; then every pod's IP
// appears in its status at once, as a node hands out addresses in a burst, and the clock runs
// from there: per pod, IP → rules applied and IP → mark; the last mark; events per second; the
// peak memory of the node-runner and the function. Needs root and the control plane.
//   npm run bench:e2e -- [pods]
import * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { missingBinariesReason } from "../test/controlplane/harness.ts";
import { peakRssMiB } from "../test/support/processes.ts";
import { STACK_NODE, startStack } from "../test/support/stack.ts";
import { testPodsUnavailableReason } from "../test/support/test-pods.ts";
import { machineDescription, summarize, table } from "./machine.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
if (unavailable !== undefined) {
  console.error(`bench:e2e: ${unavailable}`);
  process.exit(1);
}
const count = Number(process.argv[2] ?? "200");
const NS = "burst";


async function metric(url: string, name: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return [...text.matchAll(name)].reduce((sum, m) => sum + Number(m[1]), 0);
}

const stack = await startStack({ log: (l) => process.stderr.write(`${l}\n`) });
try {
  await stack.cp.ensureNamespace(NS);
  const names = Array.from({ length: count }, (_, i) => `burst-${i}`);
  const ipAt = new Map<string, number>(); // epoch ms: the IP appeared in the pod status
  const markedAt = new Map<string, number>(); // epoch ms: the mark was seen

  // 1. The pods and their sandboxes (the kubelet's part), before the clock starts: no IP yet,
  //    so the function skips them (no-pod-ip).
  process.stderr.write(`creating ${count} pods and sandboxes\n`);
  const sandboxes = new Map<string, { uid: string; ip: string }>();
  for (const name of names) {
    const created = await stack.core.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: { name, labels: { "security.istio.io/tlsMode": "istio" }, annotations: { "sidecar.istio.io/status": '{"containers":["istio-proxy"]}' } },
        spec: { nodeName: STACK_NODE, containers: [{ name: "app", image: "example/app" }, { name: "istio-proxy", image: "istio/proxyv2" }] },
      },
    });
    const uid = created.metadata?.uid ?? "";
    sandboxes.set(name, { uid, ip: stack.pods.add({ name, uid }).ip });
  }

  // Marks, from a watch that is reopened whenever it ends, and a final list as a check.
  let finished = false;
  const watcher = new k8s.Watch(stack.cp.kubeConfig());
  const allMarked = new Promise<void>((resolve) => {
    const open = (): void => {
      void watcher.watch(
        `/api/v1/namespaces/${NS}/pods`,
        {},
        (_type: string, pod: k8s.V1Pod) => {
          const name = pod.metadata?.name ?? "";
          if (pod.metadata?.annotations?.[MARK.status] === STATUS_INITIALIZED && !markedAt.has(name)) {
            markedAt.set(name, Date.now());
            if (markedAt.size === count) resolve();
          }
        },
        () => {
          if (!finished) open();
        },
      );
    };
    open();
  });
  const eventsBefore = await metric(stack.fn.url, /podnet_function_events_total\{[^}]*\} (\d+)/g);

  // 2. All IPs at once, as a node's CNI hands them out in a burst.
  process.stderr.write(`${count} IPs appear at once\n`);
  const t0 = Date.now();
  await Promise.all(
    names.map(async (name) => {
      const ip = sandboxes.get(name)?.ip ?? "";
      ipAt.set(name, Date.now());
      await stack.core.patchNamespacedPodStatus(
        { namespace: NS, name, body: { status: { podIP: ip, podIPs: [{ ip }], hostIP: "127.0.0.1" } } },
        k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
      );
    }),
  );
  await Promise.race([allMarked, new Promise((r) => setTimeout(r, 180_000))]);
  finished = true;
  const wall = (Date.now() - t0) / 1000;
  const listed = (await stack.core.listNamespacedPod({ namespace: NS })).items.filter((p) => p.metadata?.annotations?.[MARK.status] === STATUS_INITIALIZED).length;
  const events = (await metric(stack.fn.url, /podnet_function_events_total\{[^}]*\} (\d+)/g)) - eventsBefore;

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
  const lastMark = Math.max(...[...markedAt.values()]) - t0;
  console.log(machineDescription());
  console.log(`${count} pods whose IPs appear at once: ${markedAt.size} marks seen (${listed} marked when listed); last mark ${(lastMark / 1000).toFixed(2)} s after the first IP (${(markedAt.size / (lastMark / 1000)).toFixed(0)} pods/s); ${events} events handled by the function in ${wall.toFixed(1)} s`);
  console.log(`peak memory (VmHWM): node-runner ${peakRssMiB(stack.runner.process.pid).toFixed(0)} MiB, function ${peakRssMiB(stack.fn.process.pid).toFixed(0)} MiB (TypeScript through tsx)\n`);
  console.log(
    table(["ms after the pod's IP appeared", "pods", "min", "median", "p95", "p99", "max"], [
      row("rules applied (node-runner)", since(appliedAt)),
      row("pod marked (seen by a watch)", since(markedAt)),
    ]),
  );
} finally {
  await stack.stop();
}
