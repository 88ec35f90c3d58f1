// `npm run cluster:up [-- --nodes N] [--family ipv4|dual|ipv6]`: the whole system on a local cluster of real nodes
// (test/controlplane/cluster.ts), to try by hand. Starts the cluster, installs the chart, runs
// the function and the event source (as the cluster tests do), creates one mesh pod and a plain
// pod that talks to it from the other node, prints where everything is, and keeps running until
// it is signalled (SIGINT, SIGTERM or SIGHUP, to it or to npm), when it removes everything it
// made, the kubeconfig included. Needs root and the set-up of `npm run setup`.
import { rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { CACHE_DIR } from "../controlplane/harness.ts";
import { missingRealNodeReason, onNode, startRealNodeStack, type RealNodeStack } from "../support/real-node-stack.ts";

const started = Date.now();
const say = (line: string): void => {
  console.log(`cluster:up ${new Date().toISOString().slice(11, 19)} +${((Date.now() - started) / 1000).toFixed(1)}s ${line}`);
};
const { values } = parseArgs({ options: { nodes: { type: "string", default: "2" }, family: { type: "string", default: "ipv4" } } });
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
const missing = missingRealNodeReason();
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
  stack = await startRealNodeStack({ nodes, family, namespaces: [NS], log: say });
  writeFileSync(kubeconfig, stack.cp.kubeConfig().exportConfig(), { mode: 0o600 });
  const [first, last] = [stack.nodes[0], stack.nodes[stack.nodes.length - 1]];
  await stack.core.createNamespacedPod({ namespace: NS, body: onNode(first, stack.meshPod("web", stack.appContainer("server"))) });
  const running = await stack.waitRunning(NS, "web");
  await stack.core.createNamespacedPod({
    namespace: NS,
    body: onNode(last, {
      metadata: { name: "client" },
      spec: { automountServiceAccountToken: false, containers: [stack.appContainer("client", running.status?.podIP)] },
    }),
  });
  await stack.waitRunning(NS, "client");
  const kubectl = `${path.join(CACHE_DIR, "bin", "kubectl")} --kubeconfig ${kubeconfig}`;
  say("ready");
  console.log(
    [
      "",
      `  nodes: ${stack.nodes.map((n) => `${n.name} ${n.ip}`).join(", ")}; API server ${stack.cp.server} (kubeconfig ${kubeconfig})`,
      `  kubectl: ${kubectl} get pods -A -o wide`,
      `  demo/web is a mesh pod on ${first?.name ?? ""} (its annotations carry the mark); demo/client, on ${last?.name ?? ""}, connects to it every 100 ms:`,
      `    ${kubectl} logs -n demo client     # "answer inbound 15006": intercepted by web's proxy`,
      `  the node-runners: ${kubectl} logs -n podnet-system -l app.kubernetes.io/name=podnet-node-runner`,
      `  the function's log: ${stack.fnLogFile}; its metrics: ${stack.fn.metricsUrl}/metrics; the event source's (Knative's adapter) log: ${stack.adapterLogFile}`,
      `  stop: Ctrl-C, or kill -INT ${process.pid} (removes everything, the kubeconfig included)`,
    ].join("\n"),
  );
  await new Promise(() => undefined);
} catch (err) {
  console.error(err);
  await stop("error");
}
