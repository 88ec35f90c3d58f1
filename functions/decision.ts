// Does this pod need rules now, and which? (docs/architecture.md §4). Pure: pod, namespace and policy in,
// a decision with a machine-readable reason out. Cheap checks come first: most events are
// updates of pods that need nothing, and they must cost microseconds.
import { type PodRef } from "../contract/apply-request.ts";
import { readMark, refusalReason, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../contract/mark.ts";
import { CaptureConfigError, parseCaptureConfig, type CaptureConfigInput, type CaptureIssue } from "../contract/capture-config.ts";
import { ANNOTATION, deriveCaptureInput } from "./capture-from-pod.ts";
import { podIPs, proxyContainer, type Pod } from "./pod.ts";
import { applyCaptureOverrides, matchesSelector, type Policy, type PolicyMode } from "./policy.ts";

/**
 * The init container of the injection template that waits for interception (config/istio). It
 * takes the name of Istio's validation container, which Istio's injector always orders first.
 */
export const WAITER_CONTAINER = "istio-validation";
/** The waiter image's program (waiter/), as the template runs it; recognised by its file name. */
const WAITER_PROGRAM = "podnet-wait";
export const WAITER_COMMAND = `/${WAITER_PROGRAM}`;
export const LEGACY_OPT_IN = "istio-pod-network-controller/initialize";

/** Does the pod carry the project's waiter (the template's init container running it)? */
export function carriesWaiter(pod: Pod): boolean {
  return pod.spec.initContainers?.some((c) => c.name === WAITER_CONTAINER && c.command?.[0]?.split("/").pop() === WAITER_PROGRAM) === true;
}

/**
 * Skips that are final for the pod as it is: a pod that carries the waiter and is skipped for
 * one of these will wait until its waiter times out, so the operator is told (an Event).
 * Transient states (not bound yet, no IP yet, being deleted, already done) are not among them.
 */
const STRANDING_SKIPS: ReadonlySet<SkipReason> = new Set<SkipReason>([
  "not-sidecar-injected",
  "istio-init-present",
  "injection-disabled",
  "envoy-disabled",
  "interception-none",
  "host-network",
  "namespace-excluded",
  "namespace-not-included",
  "selector-mismatch",
]);

/** What a pod carrying the waiter is told in fail-open mode, the incident switch (§4). */
export const FAIL_OPEN_TEXT = "the policy's incident switch is on (mode: fail-open)";

/** Why a pod carrying the waiter will not get rules under this decision, or undefined. */
export function strandedWaiter(decision: Decision, pod: Pod, mode: PolicyMode): string | undefined {
  if (!carriesWaiter(pod)) return undefined;
  if (decision.action === "skip" && STRANDING_SKIPS.has(decision.reason)) {
    return mode === "dry-run"
      ? `${skipText(decision)}: no rules will be applied and, the policy being in dry-run mode, its ${WAITER_CONTAINER} init container will time out`
      : `${skipText(decision)}: no rules will be applied; its ${WAITER_CONTAINER} init container is released, so the pod starts without traffic interception`;
  }
  if (decision.action === "apply" && mode === "dry-run") {
    return `the policy is in dry-run mode: no rules will be applied and its ${WAITER_CONTAINER} init container will time out`;
  }
  if (failOpenReleases(decision, mode)) {
    return `${FAIL_OPEN_TEXT}: no rules will be applied; its ${WAITER_CONTAINER} init container is released, so the pod starts without traffic interception`;
  }
  return undefined;
}

const skipText = (decision: SkipDecision): string =>
  `the policy skips this pod (${decision.reason}${decision.detail === undefined ? "" : `: ${decision.detail}`})`;

/** In fail-open mode every pod that would get rules, or be refused, is released instead. */
const failOpenReleases = (decision: Decision, mode: PolicyMode): decision is Extract<Decision, { action: "apply" | "refuse" }> =>
  mode === "fail-open" && (decision.action === "apply" || decision.action === "refuse");

/**
 * A pod whose waiter waits and will get no rules, in enforce or fail-open mode: what its
 * node-runner is asked to mark (skipped, with the reason), so that the waiter lets it start
 * rather than time out. Such a pod is one the policy skips for good, or, in fail-open mode, any
 * pod that would get rules or be refused. Undefined when there is nothing to send: not such a
 * pod, not on a node with an IP yet (a later event brings it), or marked so already, or
 * initialized (rules stay where they are). Dry-run acts on no pod.
 */
export function releaseDecision(decision: Decision, pod: Pod, mode: PolicyMode): ReleaseDecision | undefined {
  // Every event's decision passes here: the decision is looked at before the pod's containers.
  if (mode === "dry-run") return undefined;
  let reason: ReleaseDecision["reason"];
  let text: string;
  if (decision.action === "skip" && STRANDING_SKIPS.has(decision.reason)) {
    reason = decision.reason;
    text = skipText(decision);
  } else if (failOpenReleases(decision, mode)) {
    reason = "fail-open";
    text = FAIL_OPEN_TEXT;
  } else {
    return undefined;
  }
  if (!carriesWaiter(pod)) return undefined;
  const node = pod.spec.nodeName;
  const hostIP = pod.status?.hostIP;
  const ips = podIPs(pod);
  if (node === undefined || node === "" || hostIP === undefined || hostIP === "" || ips.length === 0) return undefined;
  const skip = refusalReason(text);
  const mark = readMark(pod.metadata.annotations ?? {});
  if (mark.status === STATUS_INITIALIZED || (mark.status === STATUS_SKIPPED && mark.reason === skip)) return undefined;
  const meta = pod.metadata;
  return {
    action: "release",
    reason,
    skip,
    node,
    hostIP,
    pod: { namespace: meta.namespace ?? "default", name: meta.name ?? "", uid: meta.uid ?? "", ips },
  };
}

export type SkipReason =
  | "deleted"
  | "duplicate"
  | "not-sidecar-injected"
  | "istio-init-present"
  | "injection-disabled"
  | "envoy-disabled"
  | "interception-none"
  | "host-network"
  | "namespace-excluded"
  | "namespace-not-included"
  | "selector-mismatch"
  | "not-bound"
  | "no-host-ip"
  | "no-pod-ip"
  | "terminating"
  | "finished"
  | "already-initialized";

export type Decision =
  | {
      readonly action: "apply";
      readonly reason: "needs-rules" | "waiter-still-waiting";
      readonly pod: PodRef;
      readonly hostIP: string;
      readonly node: string;
      readonly capture: CaptureConfigInput;
      /** Values read leniently, as Istio does (the operator is told with a Warning Event). */
      readonly warnings: readonly CaptureIssue[];
    }
  | { readonly action: "skip"; readonly reason: SkipReason; readonly detail?: string }
  | { readonly action: "error"; readonly reason: "invalid-capture"; readonly detail: string; readonly issues: readonly CaptureIssue[] }
  | {
      /** Invalid, and the pod's waiter waits: its node-runner marks it refused with `refusal`, and the waiter fails at once saying why. */
      readonly action: "refuse";
      readonly reason: "invalid-capture";
      readonly detail: string;
      readonly issues: readonly CaptureIssue[];
      readonly refusal: string;
      readonly pod: PodRef;
      readonly hostIP: string;
      readonly node: string;
    };

/** Skipped for good (or fail-open), and the pod's waiter waits: its node-runner marks it skipped with `skip`, and the waiter lets it start without interception. */
export interface ReleaseDecision {
  readonly action: "release";
  readonly reason: SkipReason | "fail-open";
  readonly skip: string;
  readonly pod: PodRef;
  readonly hostIP: string;
  readonly node: string;
}

export interface NamespaceFacts {
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
}

const skip = (reason: SkipReason, detail?: string): SkipDecision => (detail === undefined ? { action: "skip", reason } : { action: "skip", reason, detail });

export interface DecisionInput {
  readonly pod: Pod;
  readonly policy: Policy;
  readonly namespace?: NamespaceFacts;
  readonly deleted?: boolean;
  readonly now?: number;
}

export type SkipDecision = Extract<Decision, { action: "skip" }>;

/** What a pod that is not skipped is programmed as: the apply decision without its capture config. */
interface Target {
  readonly reason: "needs-rules" | "waiter-still-waiting";
  readonly node: string;
  readonly hostIP: string;
  readonly pod: PodRef;
}

export function decide(input: DecisionInput): Decision {
  const target = skipOrTarget(input);
  if ("action" in target) return target;
  let capture: CaptureConfigInput;
  let warnings: readonly CaptureIssue[];
  try {
    const derived = deriveCaptureInput(input.pod);
    warnings = derived.warnings;
    capture = applyCaptureOverrides(derived.input, input.policy.document, target.pod.namespace);
    parseCaptureConfig(capture, derived.sources, derived.issues);
  } catch (err) {
    if (!(err instanceof CaptureConfigError)) throw err;
    const error = { action: "error", reason: "invalid-capture", detail: err.message, issues: err.issues } as const;
    // A waiter that waits for rules that will never come is told so (once: not again when the mark already says it).
    const refusal = refusalReason(`invalid capture configuration: ${err.message}`);
    const mark = readMark(input.pod.metadata.annotations ?? {});
    const told = mark.status === STATUS_REFUSED && mark.reason === refusal;
    if (!carriesWaiter(input.pod) || told) return error;
    return { ...error, action: "refuse", refusal, pod: target.pod, hostIP: target.hostIP, node: target.node };
  }
  return { action: "apply", ...target, capture, warnings };
}

/**
 * `decide` up to its skips: the skip, or undefined for a pod that needs a capture config. An
 * event's own copy of a pod is decided this far only (it is a trigger, not the truth): a pod it
 * does not skip is read from the API server and decided in full.
 */
export function skipDecision(input: DecisionInput): SkipDecision | undefined {
  const target = skipOrTarget(input);
  return "action" in target ? target : undefined;
}

function skipOrTarget(input: DecisionInput): SkipDecision | Target {
  const { pod, policy } = input;
  const p = policy.document;
  const meta = pod.metadata;
  const annotations = meta.annotations ?? {};
  const labels = meta.labels ?? {};
  const namespace = meta.namespace ?? "default";

  if (input.deleted === true) return skip("deleted");
  if (pod.spec.hostNetwork === true) return skip("host-network");
  if (p.namespaces.exclude.includes(namespace)) return skip("namespace-excluded", namespace);
  if (p.namespaces.include.length > 0 && !p.namespaces.include.includes(namespace)) return skip("namespace-not-included", namespace);
  if (meta.deletionTimestamp !== undefined && meta.deletionTimestamp !== null) return skip("terminating");
  const phase = pod.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") return skip("finished", phase);

  // Mesh membership: injected by Istio's sidecar injector (or opted in the original way).
  const optedIn = p.legacyOptIn && (annotations[LEGACY_OPT_IN] === "true" || input.namespace?.annotations?.[LEGACY_OPT_IN] === "true");
  const proxy = proxyContainer(pod);
  if (!optedIn) {
    if (proxy === undefined || annotations["sidecar.istio.io/status"] === undefined) return skip("not-sidecar-injected");
  }
  if (pod.spec.initContainers?.some((c) => c.name === "istio-init") === true) return skip("istio-init-present");
  const inject = labels["sidecar.istio.io/inject"] ?? annotations["sidecar.istio.io/inject"];
  if (inject === "false") return skip("injection-disabled");
  if (proxy?.env?.some((e) => e.name === "DISABLE_ENVOY" && e.value === "true") === true) return skip("envoy-disabled");
  if (annotations[ANNOTATION.interceptionMode] === "NONE") return skip("interception-none");
  if (p.podSelector !== undefined && !matchesSelector(labels, p.podSelector)) return skip("selector-mismatch");

  const node = pod.spec.nodeName;
  if (node === undefined || node === "") return skip("not-bound");
  const hostIP = pod.status?.hostIP;
  if (hostIP === undefined || hostIP === "") return skip("no-host-ip");
  const ips = podIPs(pod);
  if (ips.length === 0) return skip("no-pod-ip");

  let reason: "needs-rules" | "waiter-still-waiting" = "needs-rules";
  if (readMark(annotations).status === STATUS_INITIALIZED) {
    // Marked. Only a waiter that runs again or keeps waiting (its netns differs: the sandbox
    // was re-created) brings the pod back.
    if (!waiterStuck(pod, p.redispatchWaitingAfterSeconds, input.now ?? Date.now())) return skip("already-initialized");
    reason = "waiter-still-waiting";
  }

  return { reason, node, hostIP, pod: { namespace, name: meta.name ?? "", uid: meta.uid ?? "", ips } };
}

/**
 * A marked pod whose waiter runs again (the kubelet re-created the sandbox, so its init
 * containers run again in a new netns, or the waiter gave up and restarted), or still waits well
 * after it started: the rules are not where it runs. (A waiter in a programmed netns exits within
 * milliseconds.)
 */
function waiterStuck(pod: Pod, afterSeconds: number, now: number): boolean {
  const waiter = pod.status?.initContainerStatuses?.find((s) => s.name === WAITER_CONTAINER);
  const started = waiter?.state?.running?.startedAt;
  if (started === undefined) return false;
  if ((waiter?.restartCount ?? 0) > 0) return true;
  const t = Date.parse(started);
  return Number.isFinite(t) && now - t > afterSeconds * 1000;
}
