// `npm run node:up`: the whole system on a real node, to try by hand. Starts the control plane,
// the node, the node-runner DaemonSet, the function and the event source (as the real-node tests
// do), creates one mesh pod and a plain pod that talks to it, prints where everything is, and
// keeps running until Ctrl-C, when it removes everything it made. Needs root and the set-up of
// `npm run setup` (binaries and images).
import { writeFileSync } from "node:fs";
import path from "node:path";
import { CACHE_DIR } from "../controlplane/harness.ts";
import { missingRealNodeReason, startRealNodeStack } from "../support/real-node-stack.ts";

const missing = missingRealNodeReason();
if (missing !== undefined) {
  console.error(`node:up: ${missing}`);
  process.exit(1);
}
const NS = "demo";
const stack = await startRealNodeStack({
  namespaces: [NS],
  log: (line) => {
    console.log(`node:up: ${line}`);
  },
});
let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  console.log("node:up: stopping (removing everything it made)");
  await stack.stop();
  process.exit(0);
};
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
try {
  const kubeconfig = path.resolve("node-up.kubeconfig");
  writeFileSync(kubeconfig, stack.cp.kubeConfig().exportConfig(), { mode: 0o600 });
  await stack.core.createNamespacedPod({ namespace: NS, body: stack.meshPod("web", stack.appContainer("server")) });
  const web = await stack.waitRunning(NS, "web");
  await stack.core.createNamespacedPod({
    namespace: NS,
    body: { metadata: { name: "client" }, spec: { automountServiceAccountToken: false, containers: [stack.appContainer("client", web.status?.podIP)] } },
  });
  await stack.waitRunning(NS, "client");
  console.log(
    [
      "",
      `node:up: ready. API server ${stack.cp.server}, kubeconfig ${kubeconfig}`,
      `  kubectl: ${path.join(CACHE_DIR, "bin", "kubectl")} --kubeconfig ${kubeconfig} get pods -A`,
      `  demo/web is a mesh pod (its annotations carry the mark); demo/client connects to it every 100 ms and logs`,
      `  "answer inbound 15006" (intercepted): kubectl logs is not served here; read ${path.join(stack.node.dir, "pod-logs")}`,
      `  metrics: the function's ${stack.fn.metricsUrl}/metrics; the node-runner's https://${stack.node.ip}:19090/metrics (a token allowed to get /metrics)`,
      "  Ctrl-C stops everything and removes what it made.",
    ].join("\n"),
  );
  await new Promise(() => undefined);
} catch (err) {
  console.error(err);
  await stop();
}
