// `pnc uninstall-check`: the chart's pre-delete hook. While an istiod revision injects the podnet
// template, every new mesh pod gets the waiter; without the project nothing programs it, and it
// fails after its timeout. So the uninstall stops here, saying which revision and what to do.
import { parseArgs } from "node:util";
import { errorMessage } from "../lib/errors.ts";
import { istioInjectors } from "./doctor.ts";
import { CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, coreApi } from "./kube-client.ts";

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

/** `pnc uninstall-check [--istio-namespace istio-system] [--kubeconfig <file>] [--context <name>]` (in a pod: its ServiceAccount). */
export async function uninstallCheckMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  let values: { "istio-namespace": string; kubeconfig?: string | undefined; context?: string | undefined };
  try {
    values = parseArgs({ args: [...args], options: { "istio-namespace": { type: "string", default: "istio-system" }, ...CLUSTER_OPTIONS } }).values;
  } catch (err) {
    io.stderr(`pnc uninstall-check: ${errorMessage(err)}\nusage: pnc uninstall-check [--istio-namespace istio-system] ${CLUSTER_USAGE}\n`);
    return 64;
  }
  const namespace = values["istio-namespace"];
  try {
    const core = await coreApi(values);
    const configMaps = await core.listNamespacedConfigMap({ namespace });
    const blocker = uninstallBlocker(istioInjectors(configMaps.items), namespace);
    if (blocker !== undefined) {
      io.stderr(`pnc uninstall-check: ${blocker}\n`);
      return 2;
    }
    io.stdout(`pnc uninstall-check: no istiod injector in ${namespace} carries the podnet template; the uninstall goes on\n`);
    return 0;
  } catch (err) {
    io.stderr(`pnc uninstall-check: ${clusterErrorMessage(err)}\n`);
    return err instanceof ClusterConfigError ? 64 : 1;
  }
}
