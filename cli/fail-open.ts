// `pnc fail-open on|off`: the incident switch (docs/architecture.md §4). It edits the policy
// ConfigMap the function reloads: `mode: fail-open` releases every waiting pod to start without
// rules; `off` puts back the mode it replaced (kept in an annotation on the ConfigMap). The
// document keeps its comments and other fields, and is checked as the function checks it before
// anything is written.
import { parseArgs } from "node:util";
import { Document, isMap, parseDocument } from "yaml";
import { errorMessage } from "../lib/errors.ts";
import { parsePolicy, POLICY_CONFIGMAP, POLICY_KEY, POLICY_MODES, PolicyError, type PolicyMode } from "../functions/policy.ts";
import { apiStatusCode, CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, coreApi, ifFound } from "./kube-client.ts";

/** On the policy ConfigMap while fail-open is on: the mode `off` returns to. */
export const MODE_BEFORE_FAIL_OPEN = "podnet.github.io/mode-before-fail-open";

export interface PolicySwitch {
  /** The new document, or undefined when the mode is already the one asked for. */
  readonly text: string | undefined;
  readonly from: PolicyMode;
  readonly to: PolicyMode;
}

/** The policy document with its mode set; throws PolicyError when the result would not load. */
export function switchPolicyMode(text: string, to: PolicyMode): PolicySwitch {
  const from = parsePolicy(text).document.mode;
  if (from === to) return { text: undefined, from, to };
  const parsed = parseDocument(text);
  // Empty, or comments only: the default policy, to which the mode is added.
  const doc: Document = parsed.contents === null ? new Document({}) : parsed;
  if (!isMap(doc.contents)) throw new PolicyError("the policy is not a YAML mapping");
  doc.set("mode", to);
  const next = doc.toString({ flowCollectionPadding: false });
  parsePolicy(next);
  return { text: next, from, to };
}

const isMode = (value: string | undefined): value is PolicyMode => (POLICY_MODES as readonly string[]).includes(value ?? "");

/** `pnc fail-open on|off [-n <namespace>] [--kubeconfig <file>] [--context <name>]` */
export async function failOpenMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  const usage = `usage: pnc fail-open on|off [-n <namespace>] ${CLUSTER_USAGE}\n`;
  let parsed: { values: { namespace: string; kubeconfig?: string | undefined; context?: string | undefined }; positionals: string[] };
  try {
    parsed = parseArgs({
      args: [...args],
      allowPositionals: true,
      options: { namespace: { type: "string", short: "n", default: "podnet-system" }, ...CLUSTER_OPTIONS },
    });
  } catch (err) {
    io.stderr(`pnc fail-open: ${errorMessage(err)}\n${usage}`);
    return 64;
  }
  const [state, ...extra] = parsed.positionals;
  if ((state !== "on" && state !== "off") || extra.length > 0) {
    io.stderr(`pnc fail-open: say on or off\n${usage}`);
    return 64;
  }
  const { namespace } = parsed.values;
  try {
    const core = await coreApi(parsed.values);
    const configMap = await ifFound(core.readNamespacedConfigMap({ namespace, name: POLICY_CONFIGMAP }));
    if (configMap === undefined) {
      io.stderr(`pnc fail-open: no ConfigMap ${namespace}/${POLICY_CONFIGMAP} (is the project installed in ${namespace}? -n names its namespace)\n`);
      return 1;
    }
    const { [MODE_BEFORE_FAIL_OPEN]: before, ...others } = configMap.metadata?.annotations ?? {};
    const to: PolicyMode = state === "on" ? "fail-open" : isMode(before) && before !== "fail-open" ? before : "enforce";
    const change = switchPolicyMode(configMap.data?.[POLICY_KEY] ?? "", to);
    if (change.text === undefined) {
      io.stdout(`pnc fail-open: the policy's mode is ${to} already; nothing changed\n`);
      return 0;
    }
    const annotations = state === "on" ? { ...others, [MODE_BEFORE_FAIL_OPEN]: change.from } : others;
    // The resourceVersion makes this a compare-and-swap: an edit made meanwhile is not overwritten.
    await core.replaceNamespacedConfigMap({
      namespace,
      name: POLICY_CONFIGMAP,
      body: { ...configMap, metadata: { ...configMap.metadata, annotations }, data: { ...configMap.data, [POLICY_KEY]: change.text } },
    });
    io.stdout(
      state === "on"
        ? `pnc fail-open: mode ${change.from} → fail-open. Once the function reloads the policy (the kubelet updates the mounted ConfigMap within about a minute), every pod waiting for rules is released and starts without traffic interception; pods with rules keep them. Undo with: pnc fail-open off\n`
        : `pnc fail-open: mode fail-open → ${to}. Pods released meanwhile stay without interception until they are re-created (kubectl rollout restart)\n`,
    );
    return 0;
  } catch (err) {
    if (err instanceof PolicyError) {
      io.stderr(`pnc fail-open: the policy in ${namespace}/${POLICY_CONFIGMAP} cannot be switched: ${err.message}; nothing changed\n`);
      return 1;
    }
    io.stderr(`pnc fail-open: ${clusterErrorMessage(err)}${apiStatusCode(err) === 409 ? " (the policy changed meanwhile; run again)" : ""}\n`);
    return err instanceof ClusterConfigError ? 64 : 3;
  }
}
