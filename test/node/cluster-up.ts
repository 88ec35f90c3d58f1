// `npm run cluster:up [-- --nodes N] [--family ipv4|dual|ipv6] [--knative direct|broker]`: the whole system on a local cluster of real nodes
// (test/controlplane/cluster.ts), to try by hand. Starts the cluster, installs the chart and
// Istio's istiod, runs the function and the event source (as the cluster tests do), creates a
// Deployment in a namespace labelled for injection and a plain pod that talks to it from the
// other node, prints where everything is, and keeps running until
// it is signalled (SIGINT, SIGTERM or SIGHUP, to it or to npm), when it removes everything it
// made, the kubeconfig included. Needs root and the set-up of `npm run setup`.
import { rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { BIN, waitFor } from "../controlplane/harness.ts";
import { missingKnativeReason } from "../support/knative.ts";
import { missingRealNodeReason, onNode, startRealNodeStack, type RealNodeStack } from "../support/real-node-stack.ts";

const started = Date.now();
const say = (line: string): void => {
  console.log(`cluster:up ${new Date().toISOString().slice(11, 19)} +${((Date.now() - started) / 1000).toFixed(1)}s ${line}`);
};
const { values } = parseArgs({
  options: { nodes: { type: "string", default: "2" }, family: { type: "string", default: "ipv4" }, knative: { type: "string" } },
});
const nodes = Number(values.nodes);
if (!Number.isInteger(nodes) || nodes < 1 || nodes > 8) {
  console.error(`cluster:up: --nodes ${values.nodes}: a number of nodes from 1 to 8`);
  process.exit(64);
}
const family = values.family;
if (family !== "ipv4" && family !== "dual" && family !== "ipv6") {
  console.error(`cluster:up: --family ${family}: ipv4, dual or ipv6`);
  process.exit(64);
}
const delivery = values.knative;
if (delivery !== undefined && delivery !== "direct" && delivery !== "broker") {
  console.error(`cluster:up: --knative ${delivery}: direct or broker`);
  process.exit(64);
}
const missing = missingRealNodeReason() ?? (delivery === undefined ? undefined : missingKnativeReason());
if (missing !== undefined) {
  console.error(`cluster:up: ${missing}`);
  process.exit(1);
}
// Outside the work tree, and removed on stop: it holds the cluster admin's token.
const kubeconfig = path.join(os.tmpdir(), "pnc-cluster.kubeconfig");
const NS = "demo";
let stack: RealNodeStack | undefined;
let stopping = false;
const stop = async (signal: string): Promise<void> => {
  if (stopping) return;
  stopping = true;
  say(`${signal}: stopping, removing everything it made`);
  await stack?.stop();
  rmSync(kubeconfig, { force: true });
  say("stopped");
  process.exit(0);
};
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => void stop(signal));
say(`starting a ${family} cluster of ${nodes} node(s) (process ${process.pid}; stop it with Ctrl-C or kill -INT ${process.pid})`);
try {
  stack = await startRealNodeStack({ nodes, family, log: say, ...(delivery === undefined ? {} : { knative: { delivery } }) });
  writeFileSync(kubeconfig, stack.cp.kubeConfig().exportConfig(), { mode: 0o600 });
  const [first, last] = [stack.nodes[0], stack.nodes[stack.nodes.length - 1]];
  // README's way: a namespace labelled for injection, a plain Deployment in it; istiod's webhook
  // injects its pod with the podnet template.
  await stack.createNamespace(NS, { "istio-injection": "enabled" });
  await stack.createWebDeployment(NS, 1, first);
  let web = "";
  await waitFor("the web Deployment's pod Running", 120_000, async () => {
    const pods = await stack?.core.listNamespacedPod({ namespace: NS, labelSelector: "app=web" });
    const pod = pods?.items.find((p) => p.status?.phase === "Running" && p.status.containerStatuses?.every((c) => c.ready) === true);
    web = pod?.status?.podIP ?? "";
    return web !== "";
  });
  say(`demo/web's pod is Running, injected by istiod and programmed (${web})`);
  // The client stays out of the mesh: the pod label overrides the namespace's.
  await stack.core.createNamespacedPod({
    namespace: NS,
    body: onNode(last, {
      metadata: { name: "client", labels: { "sidecar.istio.io/inject": "false" } },
      spec: { automountServiceAccountToken: false, containers: [stack.appContainer("client", web)] },
    }),
  });
  await stack.waitRunning(NS, "client");
  const kubectl = `${BIN.kubectl} --kubeconfig ${kubeconfig}`;
  say("ready");
  console.log(
    [
      "",
      `  nodes: ${stack.nodes.map((n) => `${n.name} ${n.ip}`).join(", ")}; API server ${stack.cp.server} (kubeconfig ${kubeconfig})`,
      `  kubectl: ${kubectl} get pods -A -o wide`,
      `  istiod (Istio's own, in istio-system) injects namespaces labelled istio-injection=enabled, as README's install says.`,
      `  demo (labelled) runs the Deployment web on ${first?.name ?? ""} (its pod's annotations carry the mark); demo/client, on ${last?.name ?? ""}, out of the mesh, connects to it every 100 ms:`,
      `    ${kubectl} logs -n demo client     # "answer inbound 15006": intercepted by web's proxy`,
      `  your own workload: label its namespace istio-injection=enabled (README, "Try it on a local cluster")`,
      `  the node-runners: ${kubectl} logs -n podnet-system -l app.kubernetes.io/name=podnet-node-runner`,
      ...(stack.processes === undefined
        ? []
        : [
            `  the function's log: ${stack.processes.fnLogFile}; its metrics: ${stack.processes.fn.metricsUrl}/metrics; the event source's (Knative's adapter) log: ${stack.processes.adapterLogFile}`,
          ]),
      `  stop: Ctrl-C, or kill -INT ${process.pid} (removes everything, the kubeconfig included)`,
    ].join("\n"),
  );
  await new Promise(() => undefined);
} catch (err) {
  console.error(err);
  await stop("error");
}
