// `pnc uninstall-check`: the chart's pre-delete hook. While an istiod revision injects the podnet
// template, every new mesh pod gets the waiter; without the project nothing programs it, and it
// fails after its timeout. So the uninstall stops here, saying which revision and what to do.
import { parseArgs } from "node:util";
import type { AppsV1Api } from "@kubernetes/client-node";
import { errorMessage } from "../lib/errors.ts";
import { istioInjectors } from "./doctor.ts";
import { NODE_RUNNER_DAEMONSET } from "../node-runner/kube.ts";
import { CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, ifFound, loadKubeConfig } from "./kube-client.ts";

/** The message that stops an uninstall, or undefined when nothing injects the template. */
export function uninstallBlocker(injectors: readonly { readonly name: string; readonly hasTemplate: boolean }[], istioNamespace: string): string | undefined {
  const injecting = injectors.filter((i) => i.hasTemplate).map((i) => i.name);
  if (injecting.length === 0) return undefined;
  return (
    `${istioNamespace}/${injecting.join(", ")} still inject the podnet template: without this project every new mesh pod would wait ` +
    "for rules that never come and fail. First give each istiod revision its values without the template (README, Uninstall), " +
    "then uninstall again; to uninstall anyway, helm uninstall --no-hooks"
  );
}

/** How long the hook waits for the node-runners to stop (each has 10 s after SIGTERM; the kubelets notice within seconds). */
const STOP_RUNNERS_TIMEOUT_MS = 120_000;

/**
 * `pnc uninstall-check [--istio-namespace istio-system] [--stop-node-runners -n <namespace>] [--kubeconfig <file>] [--context <name>]`
 * (in a pod: its ServiceAccount). With --stop-node-runners, once the check passes, the
 * node-runners' DaemonSet is deleted in the foreground and awaited: each runner, seeing it go
 * while its own RBAC is still there, removes its state from its node.
 */
export async function uninstallCheckMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  let values: { "istio-namespace": string; "stop-node-runners": boolean; namespace: string; kubeconfig?: string | undefined; context?: string | undefined };
  try {
    values = parseArgs({
      args: [...args],
      options: {
        "istio-namespace": { type: "string", default: "istio-system" },
        "stop-node-runners": { type: "boolean", default: false },
        namespace: { type: "string", short: "n", default: "podnet-system" },
        ...CLUSTER_OPTIONS,
      },
    }).values;
  } catch (err) {
    io.stderr(
      `pnc uninstall-check: ${errorMessage(err)}\nusage: pnc uninstall-check [--istio-namespace istio-system] [--stop-node-runners -n <namespace>] ${CLUSTER_USAGE}\n`,
    );
    return 64;
  }
  const namespace = values["istio-namespace"];
  try {
    const kc = await loadKubeConfig(values);
    const { AppsV1Api, CoreV1Api } = await import("@kubernetes/client-node");
    const core = kc.makeApiClient(CoreV1Api);
    const configMaps = await core.listNamespacedConfigMap({ namespace });
    const blocker = uninstallBlocker(istioInjectors(configMaps.items), namespace);
    if (blocker !== undefined) {
      io.stderr(`pnc uninstall-check: ${blocker}\n`);
      return 2;
    }
    io.stdout(`pnc uninstall-check: no istiod injector in ${namespace} carries the podnet template; the uninstall goes on\n`);
    if (values["stop-node-runners"]) {
      const stopped = await stopNodeRunners(kc.makeApiClient(AppsV1Api), values.namespace);
      io.stdout(`pnc uninstall-check: ${stopped}\n`);
    }
    return 0;
  } catch (err) {
    io.stderr(`pnc uninstall-check: ${clusterErrorMessage(err)}\n`);
    return err instanceof ClusterConfigError ? 64 : 1;
  }
}

/** Delete the node-runners' DaemonSet in the foreground and wait until its pods are gone. */
async function stopNodeRunners(apps: AppsV1Api, namespace: string): Promise<string> {
  const deleted = await ifFound(apps.deleteNamespacedDaemonSet({ namespace, name: NODE_RUNNER_DAEMONSET, propagationPolicy: "Foreground" }));
  if (deleted === undefined) return `no DaemonSet ${namespace}/${NODE_RUNNER_DAEMONSET}: no node-runner to stop`;
  const deadline = Date.now() + STOP_RUNNERS_TIMEOUT_MS;
  while ((await ifFound(apps.readNamespacedDaemonSet({ namespace, name: NODE_RUNNER_DAEMONSET }))) !== undefined) {
    if (Date.now() > deadline)
      return `the node-runners did not all stop within ${STOP_RUNNERS_TIMEOUT_MS / 1000} s: those still running keep their state in /run/podnet`;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return "the node-runners stopped and removed their state from their nodes";
}
