// pnc's commands, with their I/O passed in so that tests can drive them. `pnc plan` previews
// the rules a pod would get, without root and without a cluster.
import { parseArgs } from "node:util";
import { parseAllDocuments } from "yaml";
import { CaptureConfigError, formatIssue, formatWarning, parseCaptureConfig, type CaptureConfigInput } from "../contract/capture-config.ts";
import { deriveCaptureInput } from "../functions/capture-from-pod.ts";
import { decide, type NamespaceFacts } from "../functions/decision.ts";
import { parsePod, PodManifestError, type Pod } from "../functions/pod.ts";
import { parsePolicy, POLICY_KEY, PolicyError } from "../functions/policy.ts";
import { NODE_RUNNER_SERVER_NAME } from "../contract/apply-request.ts";
import { MARK } from "../contract/mark.ts";
import { generateKeys, KeyManifestError, rotateKeys, type KeyManifests } from "./keys.ts";
import { generateTls, tlsManifests } from "./tls.ts";
import { istioOperatorOverlay, TemplateError, withWaiterImage } from "./istio-template.ts";
import { BACKEND, BACKENDS, isBackendName } from "../node-runner/backends.ts";
import { ipCommand, netSetupSteps } from "../node-runner/rules/routes.ts";
import { errorMessage } from "../lib/errors.ts";

/** Exit codes, documented in the README. */
export const EXIT = {
  ok: 0,
  internal: 1,
  invalidCapture: 2,
  badInput: 3,
  invalidPolicy: 4,
  usage: 64,
} as const;

const USAGE = `usage:
  pnc plan <pod.yaml|pod.json|-> [--backend iptables-nft|iptables-legacy|nftables] [--family v4|v6|both] [--json]
  pnc decide <pod.yaml|pod.json|-> [--namespace <namespace manifest>] [--policy <policy.yaml|configmap.yaml>] [--json]
  pnc keys generate [--namespace podnet-system] --out <dir>
  pnc keys rotate --secret <file> --configmap <file> --out <dir>
  pnc keys ensure [--namespace podnet-system] [--kubeconfig <file>] [--context <name>]
  pnc keys renew [-n podnet-system] [--renew-before 30d] [--step-after 10m] [--kubeconfig <file>] [--context <name>]
  pnc istio-template [--waiter-image <image>] [--istio-operator] [--template config/istio/podnet-injection-template.yaml] [--values config/istio/istiod-values.yaml]
  pnc status [-n <namespace>] [--kubeconfig <file>] [--context <name>] [--json]
  pnc doctor [-n podnet-system] [--istio-namespace istio-system] [--kubeconfig <file>] [--context <name>] [--json]
  pnc uninstall-check [--istio-namespace istio-system] [--kubeconfig <file>] [--context <name>]
  pnc fail-open on|off [-n podnet-system] [--kubeconfig <file>] [--context <name>]

  Prints the rules the node-runner would apply for the pod, derived the way istio-cni does
  (annotations, istio-proxy env and securityContext). --family defaults to the pod's own
  addresses (v4, or both when it has an IPv6 address); v6 and both preview IPv6 rules.

  decide prints what the decision function would do with the pod (apply, skip or refuse, and
  why) under the policy given (Istio defaults when none): a policy document, or the cluster's
  ConfigMap (kubectl get configmap -n podnet-system podnet-policy -o yaml > policy.yaml).

  keys writes signing-keys.secret.yaml (the function's private keys) and
  public-keys.configmap.yaml (the node-runners' public keys); generate also writes the
  node-runners' TLS certificate (node-runner-tls.secret.yaml, needs openssl) and the CA the
  function trusts (node-runner-ca.configmap.yaml); rotate adds a new signing pair and keeps the
  old ones. ensure creates in the cluster whichever of those four objects are missing and keeps
  the others (the Helm chart's keys.generate Job runs it; needs openssl for TLS). renew (the
  chart's hourly CronJob) takes one step of the node-runners' certificate rotation when it is
  due: a new CA trusted beside the old, then the new certificate served, then the old CA dropped.

  istio-template prints the podnet injection template; with --waiter-image, with the waiter
  image your install uses as its default (pods may still name another with
  podnet.github.io/waiter-image). Give it to istiod's chart with --set-file
  sidecarInjectorWebhook.templates.podnet=<file>; with --istio-operator it comes inside an
  IstioOperator overlay with the settings of config/istio/istiod-values.yaml, for
  istioctl install -f <your IstioOperator> -f <it>.

  status lists the cluster's mesh pods: each one's mark (initialized with its rules, refused
  with the reason, or none yet), its waiter's state, and for a pod without a mark the last
  Warning the project recorded about it (needs a kubeconfig that may list pods and Events).

  doctor checks a live install: a Ready node-runner on every schedulable node, their priority
  class and its quota, the keys (the runners accept the function's) and the node-runners'
  certificate (expiry), the function and its sources Ready with a sink audience, the policy (it
  loads; its mode), Knative's OIDC feature, every istiod revision's injector carrying the template
  with CNI mode off and a waiter image that can be pulled, no istio-cni agent, Istio's and
  Knative's versions against the tested ones, pods waiting in the waiter; ok / warning / error
  with the fix for each (exit 0 all ok, 1 warnings, 2 errors, 3 the cluster could not be read).

  uninstall-check (the chart's pre-delete hook) fails, saying which, while an istiod revision
  still injects the podnet template: new mesh pods would wait for rules that never come.

  fail-open on is the incident switch: it sets the policy's mode to fail-open, so that every
  pod waiting for rules starts without them (pods with rules keep them); off puts back the mode
  it replaced. The policy ConfigMap is edited in place, its comments kept, checked first.

  ensure, status, doctor, uninstall-check and fail-open find the cluster as kubectl does: --kubeconfig, else KUBECONFIG, else
  ~/.kube/config (in a pod, its ServiceAccount); --context picks a context of it.

  The waiter init container is its own small program (waiter/, image target waiter).

exit codes: 0 ok, 2 invalid capture configuration, 3 unreadable input or not a Pod,
  4 invalid policy, 64 usage`;

class UsageError extends Error {}
class InputError extends Error {}

export interface Io {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly readFile: (path: string) => string;
  readonly readStdin: () => string;
  readonly writeFile: (path: string, text: string) => void;
}

export function runPnc(argv: readonly string[], io: Io): number {
  try {
    const [command, ...rest] = argv;
    if (command === "plan") return plan(rest, io);
    if (command === "decide") return decideCommand(rest, io);
    if (command === "keys") return keysCommand(rest, io);
    if (command === "istio-template") return istioTemplateCommand(rest, io);
    if (command === undefined || command === "help" || command === "--help" || command === "-h") {
      io.stdout(`${USAGE}\n`);
      return command === undefined ? EXIT.usage : EXIT.ok;
    }
    throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  } catch (err) {
    if (err instanceof CaptureConfigError) {
      io.stderr(`pnc: the pod's capture configuration is invalid; no rules would be applied:\n${err.issues.map((i) => `  - ${formatIssue(i)}`).join("\n")}\n`);
      return EXIT.invalidCapture;
    }
    if (err instanceof KeyManifestError) {
      io.stderr(`pnc: ${err.message}\n`);
      return EXIT.badInput;
    }
    if (err instanceof PolicyError) {
      io.stderr(`pnc: ${err.message}\n`);
      return EXIT.invalidPolicy;
    }
    if (err instanceof InputError || err instanceof PodManifestError || err instanceof TemplateError) {
      io.stderr(`pnc: ${err.message}\n`);
      return EXIT.badInput;
    }
    if (err instanceof UsageError || isParseArgsError(err)) {
      io.stderr(`pnc: ${err.message}\n${USAGE}\n`);
      return EXIT.usage;
    }
    io.stderr(`pnc: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return EXIT.internal;
  }
}

function isParseArgsError(err: unknown): err is Error {
  const code: unknown = err instanceof TypeError ? (err as TypeError & { code?: unknown }).code : undefined;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS");
}

function plan(args: readonly string[], io: Io): number {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      backend: { type: "string", default: "iptables-nft" },
      family: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  if (positionals.length !== 1) throw new UsageError("plan takes exactly one pod manifest (a path, or - for stdin)");
  const backend = values.backend;
  if (!isBackendName(backend)) throw new UsageError(`--backend must be one of ${BACKENDS.join(", ")}, not ${JSON.stringify(backend)}`);
  const family = values.family;
  if (family !== undefined && family !== "v4" && family !== "v6" && family !== "both") {
    throw new UsageError(`--family must be v4, v6 or both, not ${JSON.stringify(family)}`);
  }

  const source = positionals[0] as string;
  const pod = readPod(source, io);
  const derived = deriveCaptureInput(pod);
  const input: CaptureConfigInput = family === undefined ? derived.input : { ...derived.input, enableIPv6: family !== "v4" };
  const config = parseCaptureConfig(input, derived.sources, derived.issues);
  for (const w of derived.warnings) io.stderr(`pnc: warning: ${formatWarning(w)}\n`);
  const showV4 = family !== "v6";
  const showV6 = config.enableIPv6 && family !== "v4";
  const netSetup = netSetupSteps(config).filter((s) => (s.family === 4 ? showV4 : showV6));
  const podName = `${pod.metadata.namespace ?? "default"}/${pod.metadata.name ?? "(unnamed)"}`;

  const { text } = BACKEND[backend].render(config);
  // What the mark's `rules` annotation and the NetworkInitialized Event will say, with this backend.
  const rulesDigest = BACKEND[backend].digest(config);
  if (text.both !== undefined) {
    // One tool run for both families (nftables' inet tables).
    if (values.json) {
      io.stdout(`${JSON.stringify({ pod: podName, backend, rulesDigest, capture: input, nft: text.both, netSetup: stepsJson(netSetup) }, null, 2)}\n`);
      return EXIT.ok;
    }
    io.stdout(`# pod ${podName}: nft -f - (one transaction, IPv4${config.enableIPv6 ? " and IPv6" : ""} in inet tables)\n${text.both}`);
  } else {
    const v4 = showV4 ? (text.v4 ?? null) : null;
    const v6 = showV6 ? (text.v6 ?? null) : null;
    if (values.json) {
      io.stdout(`${JSON.stringify({ pod: podName, backend, rulesDigest, capture: input, iptables: { v4, v6 }, netSetup: stepsJson(netSetup) }, null, 2)}\n`);
      return EXIT.ok;
    }
    if (v4 !== null) io.stdout(`# pod ${podName}: iptables-restore --noflush (IPv4)\n${v4}`);
    if (v6 !== null) io.stdout(`# pod ${podName}: ip6tables-restore --noflush (IPv6)\n${v6}`);
  }
  if (netSetup.length > 0) {
    io.stdout(`# network setup\n${netSetup.map((s) => `ip ${ipCommand(s, "add").join(" ")}`).join("\n")}\n`);
  }
  io.stdout(`# rules ${rulesDigest}: the mark's ${MARK.rules} once applied with ${backend}\n`);
  return EXIT.ok;
}

function decideCommand(args: readonly string[], io: Io): number {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: { namespace: { type: "string" }, policy: { type: "string" }, json: { type: "boolean", default: false } },
  });
  if (positionals.length !== 1) throw new UsageError("decide takes exactly one pod manifest (a path, or - for stdin)");
  const pod = readPod(positionals[0] as string, io);
  const policy = parsePolicy(values.policy === undefined ? "" : policyText(values.policy, io));
  let namespace: NamespaceFacts | undefined;
  if (values.namespace !== undefined) {
    const ns = readDocument(values.namespace, io) as {
      kind?: unknown;
      metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
    } | null;
    if (ns?.kind !== "Namespace") throw new InputError(`${values.namespace}: not a Namespace manifest`);
    namespace = { labels: ns.metadata?.labels ?? {}, annotations: ns.metadata?.annotations ?? {} };
  }
  const decision = decide({ pod, policy, ...(namespace === undefined ? {} : { namespace }) });
  if (values.json) {
    io.stdout(`${JSON.stringify({ policy: policy.id, mode: policy.document.mode, ...decision }, null, 2)}\n`);
  } else if (decision.action === "apply") {
    io.stdout(
      `apply (${decision.reason}): pod ${decision.pod.namespace}/${decision.pod.name} on node ${decision.node} (${decision.hostIP}); policy ${policy.id}, ${policy.document.mode}\n`,
    );
  } else if (decision.action === "skip") {
    io.stdout(`skip (${decision.reason})${decision.detail === undefined ? "" : `: ${decision.detail}`}; policy ${policy.id}\n`);
  } else {
    const told = decision.action === "refuse" ? ", marked refused (its waiter exits 14 with the reason)" : "";
    io.stderr(
      `pnc: error (${decision.reason}): the pod would be refused${told} and a NetworkInitFailed Event recorded:\n${decision.issues.map((i) => `  - ${formatIssue(i)}`).join("\n")}\n`,
    );
    return EXIT.invalidCapture;
  }
  return EXIT.ok;
}

function istioTemplateCommand(args: readonly string[], io: Io): number {
  const { values, positionals } = parseArgs({
    args: [...args],
    options: {
      "waiter-image": { type: "string" },
      "istio-operator": { type: "boolean", default: false },
      template: { type: "string", default: "config/istio/podnet-injection-template.yaml" },
      values: { type: "string", default: "config/istio/istiod-values.yaml" },
    },
    allowPositionals: true,
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
  const read = (file: string): string => {
    try {
      return io.readFile(file);
    } catch (err) {
      throw new InputError(`cannot read ${file}: ${errorMessage(err)}`);
    }
  };
  const image = values["waiter-image"];
  const template = image === undefined ? read(values.template) : withWaiterImage(read(values.template), image);
  io.stdout(values["istio-operator"] ? istioOperatorOverlay(read(values.values), template) : template);
  return EXIT.ok;
}

function keysCommand(args: readonly string[], io: Io): number {
  const [sub, ...rest] = args;
  const { values } = parseArgs({
    args: rest,
    options: { namespace: { type: "string", default: "podnet-system" }, out: { type: "string" }, secret: { type: "string" }, configmap: { type: "string" } },
  });
  if (values.out === undefined) throw new UsageError("keys needs --out <dir>");
  let result: KeyManifests;
  if (sub === "generate") result = generateKeys(values.namespace);
  else if (sub === "rotate") {
    if (values.secret === undefined || values.configmap === undefined) throw new UsageError("keys rotate needs --secret and --configmap");
    result = rotateKeys(readText(values.secret, io), readText(values.configmap, io));
  } else throw new UsageError(`keys takes generate or rotate, not ${JSON.stringify(sub ?? "")}`);
  io.writeFile(`${values.out}/signing-keys.secret.yaml`, result.secret);
  io.writeFile(`${values.out}/public-keys.configmap.yaml`, result.configMap);
  io.stdout(
    `new key ${result.keyid}: ${values.out}/signing-keys.secret.yaml (private; apply after the ConfigMap), ${values.out}/public-keys.configmap.yaml (public)\n`,
  );
  if (sub === "generate") {
    const tls = tlsManifests(values.namespace, generateTls());
    io.writeFile(`${values.out}/node-runner-tls.secret.yaml`, tls.secret);
    io.writeFile(`${values.out}/node-runner-ca.configmap.yaml`, tls.configMap);
    io.stdout(
      `node-runner TLS for ${NODE_RUNNER_SERVER_NAME}: ${values.out}/node-runner-tls.secret.yaml (private), ${values.out}/node-runner-ca.configmap.yaml (the CA the function trusts)\n`,
    );
  }
  return EXIT.ok;
}

function stepsJson(steps: ReturnType<typeof netSetupSteps>): unknown[] {
  return steps.map((s) => ({ ...s, argv: ["ip", ...ipCommand(s, "add")] }));
}

function readText(source: string, io: Io): string {
  try {
    return source === "-" ? io.readStdin() : io.readFile(source);
  } catch (err) {
    throw new InputError(`cannot read ${source === "-" ? "stdin" : source}: ${errorMessage(err)}`);
  }
}

/**
 * A policy document, or the cluster's own ConfigMap as `kubectl get configmap podnet-policy -o
 * yaml` prints it (its `policy.yaml`, which the function reads).
 */
function policyText(source: string, io: Io): string {
  const text = readText(source, io);
  let doc: unknown;
  try {
    doc = parseAllDocuments(text)[0]?.toJS({ maxAliasCount: 50 });
  } catch {
    return text; // not YAML at all: the policy parser says why
  }
  const configMap = doc as { kind?: unknown; apiVersion?: unknown; data?: Record<string, unknown> } | null | undefined;
  if (configMap?.kind !== "ConfigMap" || configMap.apiVersion !== "v1") return text;
  const policy = configMap.data?.[POLICY_KEY];
  if (typeof policy !== "string") throw new InputError(`${source}: a ConfigMap without data.${POLICY_KEY} (the function's policy lives there)`);
  return policy;
}

/** Read one Pod from a YAML or JSON file (or stdin for "-"). */
function readPod(source: string, io: Io): Pod {
  return parsePod(readDocument(source, io));
}

/** Exactly one YAML/JSON document. */
function readDocument(source: string, io: Io): unknown {
  const text = readText(source, io);
  // An empty stream is an empty array: "found 0 documents".
  const nonEmpty = parseAllDocuments(text, { prettyErrors: true }).filter((d) => d.contents !== null);
  const [doc] = nonEmpty;
  if (doc === undefined || nonEmpty.length !== 1) throw new InputError(`${source}: expected exactly one Pod manifest, found ${nonEmpty.length} documents`);
  if (doc.errors.length > 0) throw new InputError(`${source}: not valid YAML/JSON: ${doc.errors.map((e) => e.message).join("; ")}`);
  return doc.toJS({ maxAliasCount: 50 }) as unknown;
}
