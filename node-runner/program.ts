// Programming one pod once its request is verified (docs/architecture.md §7): the pod is the
// API server's pod on this node, its network namespace is found and opened once, the rules
// are applied against that descriptor, and the pod is marked. Every refusal is a `Refusal`
// with its HTTP status; nothing is half-applied (the apply engine's own transaction).
import { REFUSAL, type RefusalReason, type RefusalSpec } from "../contract/refusals.ts";
import type { Logger } from "pino";
import type { PodRef, ProgramOutcome } from "../contract/apply-request.ts";
import { STATUS_INITIALIZED } from "../contract/mark.ts";
import { CaptureConfigError, parseCaptureConfig } from "../contract/capture-config.ts";
import { errorMessage } from "../lib/errors.ts";
import { ApplyError } from "./apply/commands.ts";
import { StateError } from "./apply/records.ts";
import type { ChoosableNetns, NetnsApplier } from "./backends.ts";
import { EventQueue } from "./events.ts";
import { unknownOwnerGroups } from "./groups.ts";
import { identityFromApiError, type FoundPod, type MissingPod, type PodApi } from "./kube.ts";
import type { NodeRunnerMetrics } from "./metrics.ts";
import { NetnsGoneError, netnsStillInhabited, openNetns, type NetnsResolution, type OpenNetns, type ResolvedNetns } from "./netns.ts";

/**
 * Events follow the answers and the work (events.ts): two at a time, once no pod has been
 * programmed for EVENT_QUIET_MS, or after EVENT_MAX_DELAY_MS on a node that is never quiet. In
 * a burst they wait instead of taking CPU and API server time from the marks the pods wait for
 * (the marks are awaited, the Events are not; docs/performance.md, "The whole system").
 */
export const EVENTS_AT_ONCE = 2;
export const EVENT_QUIET_MS = 250;
export const EVENT_MAX_DELAY_MS = 5000;
/** Events waiting to be sent at most (a slow API server must not pile them up in memory); more are dropped and counted. */
export const MAX_EVENTS_WAITING = 1000;

/** A request refused with a documented status and reason (its Retry-After from contract/refusals.ts); nothing was changed. */
export class Refusal extends Error {
  readonly status: RefusalSpec["status"];
  readonly retryAfterSeconds: number | undefined;
  constructor(
    readonly reason: RefusalReason,
    message: string,
  ) {
    super(message);
    ({ status: this.status, retryAfterSeconds: this.retryAfterSeconds } = REFUSAL[reason]);
  }
}

export interface ProgramDeps {
  readonly nodeName: string;
  readonly pods: PodApi;
  readonly resolveNetns: (pod: { uid: string; ips: readonly string[] }) => Promise<NetnsResolution>;
  /** The applier for a pod's namespace (the iptables backend may be detected per namespace). */
  readonly applierFor: (netns: ChoosableNetns, podUid: string) => Promise<NetnsApplier>;
  /** Whether the process the namespace was found through is still in it (default: netnsStillInhabited). */
  readonly stillInhabited?: (netns: ResolvedNetns) => boolean;
  /** Opens the resolved namespace for one apply (default: openNetns). */
  readonly openNetns?: (netns: ResolvedNetns) => OpenNetns;
  readonly metrics: NodeRunnerMetrics;
  /** The group database owner-group names are resolved in (default /etc/group: the tools' own). */
  readonly groupFile?: string;
  /** When Events go (default EVENT_QUIET_MS, EVENT_MAX_DELAY_MS): tests shorten them. */
  readonly eventTiming?: { readonly quietMs: number; readonly maxDelayMs: number };
}

export interface PodProgrammer {
  /** Rules for `capture` (wire form, validated here: 422 when invalid) in the pod's netns, then the mark. */
  apply(pod: PodRef, capture: unknown, log: Logger): Promise<ProgramOutcome>;
  /** The pod marked refused with the reason (the function found its configuration invalid), unless it is initialized. */
  refuse(pod: PodRef, reason: string, log: Logger): Promise<ProgramOutcome>;
  /** The pod marked skipped with the reason (the policy keeps it out of the mesh), unless it is initialized. */
  skip(pod: PodRef, reason: string, log: Logger): Promise<ProgramOutcome>;
  /** Sends the Events still waiting, quiet or not (shutdown); resolves when none is pending. */
  flushEvents(): Promise<void>;
  /** Events being sent or waiting. */
  readonly pendingEvents: number;
}

export function createPodProgrammer(deps: ProgramDeps): PodProgrammer {
  const stillInhabited = deps.stillInhabited ?? netnsStillInhabited;
  /**
   * The pod exists with that UID and is bound here (the API server's word). That it has a network
   * namespace of its own is the netns resolution's to find: a hostNetwork pod's processes are
   * only in the node's (`host-netns`).
   */
  async function checkPodIdentity(pod: PodRef): Promise<FoundPod> {
    const identity = await deps.pods.identify(pod).catch((err: unknown): never => {
      throw new Refusal("api-unavailable", `cannot check the pod with the API server: ${errorMessage(err)}`);
    });
    if (identity.kind !== "found") throw identityRefusal(pod, identity, "");
    if (identity.terminating) throw new Refusal("terminating", "the pod is being deleted");
    return identity;
  }

  /** A refusal or a skip from the function: the mark with its reason, unless the pod is initialized (what runs stays). */
  function markUnlessInitialized(pod: PodRef, result: "refused" | "skipped", reason: string, log: Logger): Promise<ProgramOutcome> {
    return events.during(async () => {
      const identity = await checkPodIdentity(pod);
      if (identity.marked === STATUS_INITIALIZED) return { result: "kept-initialized" };
      try {
        await (result === "refused" ? deps.pods.markRefused(pod, reason) : deps.pods.markSkipped(pod, reason));
      } catch (err) {
        const gone = identityFromApiError(err);
        if (gone !== undefined) throw identityRefusal(pod, gone, " any more");
        throw new Refusal("api-unavailable", `the pod could not be marked ${result}: ${errorMessage(err)}`);
      }
      log.info({ [result === "refused" ? "refusal" : "skip"]: reason }, `pod marked ${result}`);
      return { result };
    });
  }

  /**
   * A pod whose configuration can never be applied is marked refused with the reason, so that
   * its waiter fails at once saying why; never one already initialized (what runs stays, with
   * its rules). A mark that cannot be written is only logged: the refusal is answered anyway.
   */
  async function markRefused(pod: PodRef, identity: FoundPod, reason: string, log: Logger): Promise<void> {
    if (identity.marked === STATUS_INITIALIZED) return;
    await deps.pods.markRefused(pod, reason).catch((err: unknown) => {
      log.warn({ err: errorMessage(err) }, "could not mark the pod refused");
    });
  }

  function identityRefusal(pod: PodRef, identity: MissingPod, when: string): Refusal {
    const named = `pod ${pod.namespace}/${pod.name}`;
    switch (identity.kind) {
      case "not-found":
        return new Refusal("pod-not-found", `${named} does not exist${when}`);
      case "uid-mismatch":
        return new Refusal("uid-mismatch", `${named} is not the one with UID ${pod.uid}${when}: ${identity.detail}`);
      case "not-on-this-node":
        return new Refusal("not-on-this-node", `${named} is not bound to ${deps.nodeName}${when}: ${identity.detail}`);
    }
  }

  /**
   * Resolve the pod's netns and open it once: the work runs against that descriptor. Where the
   * namespace is not found, the pod's identity check's refusal (it is gone, or not this node's),
   * if it refuses, is the answer.
   */
  async function withNetns<T>(pod: PodRef, identity: () => Promise<FoundPod>, work: (netns: OpenNetns, resolved: ResolvedNetns) => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const resolution = await deps.resolveNetns({ uid: pod.uid, ips: pod.ips });
    deps.metrics.netnsDuration.observe({ outcome: resolution.found ? "found" : resolution.reason }, (performance.now() - t0) / 1000);
    if (!resolution.found) {
      await identity();
      if (resolution.reason === "host-netns-only") throw new Refusal("host-netns", resolution.detail);
      if (resolution.reason === "ambiguous-netns") throw new Refusal("ambiguous-netns", resolution.detail);
      if (resolution.reason === "host-netns-unknown") throw new Refusal("host-netns-unknown", resolution.detail);
      throw new Refusal("netns-not-found", resolution.detail);
    }
    let netns: OpenNetns;
    try {
      netns = (deps.openNetns ?? openNetns)(resolution.netns);
    } catch (err) {
      await identity();
      if (err instanceof NetnsGoneError) throw new Refusal("netns-not-found", err.message);
      throw err;
    }
    try {
      return await work(netns, resolution.netns);
    } finally {
      netns.close();
    }
  }

  /** A failure to send is only logged and counted; one more than MAX_EVENTS_WAITING is dropped, counted and logged. */
  const events = new EventQueue<{ pod: PodRef; event: { type: "Normal" | "Warning"; reason: string; message: string }; log: Logger }>({
    atOnce: EVENTS_AT_ONCE,
    maxWaiting: MAX_EVENTS_WAITING,
    quietMs: deps.eventTiming?.quietMs ?? EVENT_QUIET_MS,
    maxDelayMs: deps.eventTiming?.maxDelayMs ?? EVENT_MAX_DELAY_MS,
    send: ({ pod, event, log }) =>
      deps.pods.recordEvent(pod, event).catch((err: unknown) => {
        deps.metrics.eventFailures.inc({ reason: event.reason });
        log.warn({ err: errorMessage(err), reason: event.reason }, "could not record a Kubernetes Event");
      }),
    onPending: (pending) => {
      deps.metrics.eventsPending.set(pending);
    },
  });
  function recordEvent(pod: PodRef, type: "Normal" | "Warning", reason: string, message: string, log: Logger): void {
    if (!events.add({ pod, event: { type, reason, message }, log })) {
      deps.metrics.eventFailures.inc({ reason: `${reason}-dropped` });
      log.warn({ reason, pending: events.pending }, "Kubernetes Event dropped: too many waiting");
    }
  }

  /** The pod's capture configuration cannot be applied here: 422, and the pod is told. */
  async function invalidCapture(pod: PodRef, identity: FoundPod, message: string, log: Logger): Promise<Refusal> {
    recordEvent(pod, "Warning", "NetworkInitFailed", `invalid capture configuration: ${message}`, log);
    await markRefused(pod, identity, `invalid capture configuration: ${message}`, log);
    return new Refusal("invalid-capture", message);
  }

  /** The rules could not be applied (nothing changed: the engine's transaction): the pod is told, and refused where its tables refuse them. */
  async function applyFailed(pod: PodRef, identity: FoundPod, err: unknown, log: Logger): Promise<unknown> {
    recordEvent(pod, "Warning", "NetworkInitFailed", `applying the rules failed: ${errorMessage(err)}`, log);
    const refusal = asRefusal(err);
    // The namespace's tables refuse these rules (nothing changed): that stays so until someone changes them.
    if (refusal instanceof Refusal && refusal.reason === "rules-refused") await markRefused(pod, identity, `the rules were refused: ${refusal.message}`, log);
    return refusal;
  }

  /** Rules applied to a new pod's namespace before the API server refused the pod: taken out, so that the refusal leaves nothing behind. */
  async function takeOut(applier: NetnsApplier, log: Logger): Promise<void> {
    try {
      await applier.remove();
      log.info("rules taken out again: the API server refused the pod's mark");
    } catch (err) {
      log.error({ err: errorMessage(err) }, "the API server refused the pod's mark, and its rules could not be taken out");
    }
  }

  async function applyIn(
    pod: PodRef,
    identity: () => Promise<FoundPod>,
    capture: ReturnType<typeof parseCaptureConfig>,
    netns: OpenNetns,
    resolved: ResolvedNetns,
    log: Logger,
  ): Promise<ProgramOutcome> {
    let t0 = performance.now();
    let applier: NetnsApplier;
    try {
      applier = await deps.applierFor(netns, pod.uid);
    } catch (err) {
      throw await applyFailed(pod, await identity(), err, log); // the identity check's refusal first
    }
    // A namespace that holds rules is changed only once the identity check has answered. One
    // that holds none (a new pod's) is programmed at once: the mark's patch checks the same (the
    // pod's UID, bound to this node), and where it refuses, the rules are taken out again.
    if (!applier.untouched) {
      const waitStarted = performance.now();
      keepRulesOfInitialized(await identity(), netns.inode, applier.digest(capture));
      t0 += performance.now() - waitStarted; // the engine's time, not the API server's
    }
    let result: Awaited<ReturnType<NetnsApplier["apply"]>>;
    try {
      result = await applier.apply(capture);
    } catch (err) {
      throw await applyFailed(pod, await identity(), err, log);
    }
    deps.metrics.applyDuration.observe({ result: result.result }, (performance.now() - t0) / 1000);
    // The descriptor kept the namespace alive however the pod fared meanwhile: a sandbox that
    // ended during the apply left rules in a namespace nobody uses, and the pod is not marked.
    if (!stillInhabited(resolved)) {
      throw new Refusal(
        "netns-not-found",
        `the pod's network namespace ${netns.inode} lost its last process while the rules were applied (sandbox ended or re-created): not marked`,
      );
    }
    try {
      await deps.pods.markInitialized(pod, { netns: netns.inode, rules: result.digest });
    } catch (err) {
      // The pod is gone, replaced or not this node's (a new pod's namespace, not checked before), or went away while its rules were applied.
      const missing = identityFromApiError(err);
      if (missing !== undefined && applier.untouched) {
        await takeOut(applier, log);
        throw identityRefusal(pod, missing, " (its rules were taken out again)");
      }
      if (missing !== undefined) throw identityRefusal(pod, missing, " any more (after its rules were applied)");
      // The rules are in place; a retry finds them unchanged and marks the pod then.
      throw new Refusal("api-unavailable", `rules applied but the pod could not be marked: ${errorMessage(err)}`);
    }
    if (result.result === "applied") {
      recordEvent(pod, "Normal", "NetworkInitialized", `traffic capture programmed in network namespace ${netns.inode} (rules ${result.digest})`, log);
    }
    return { result: result.result, netns: netns.inode, rules: result.digest };
  }

  return {
    apply: (pod, captureInput, log) =>
      events.during(async () => {
        // The identity check (an API round trip), asked once, where the answer needs it.
        let identifying: Promise<FoundPod> | undefined;
        const identity = (): Promise<FoundPod> => (identifying ??= checkPodIdentity(pod));
        let capture: ReturnType<typeof parseCaptureConfig>;
        try {
          capture = parseCaptureConfig(captureInput);
        } catch (err) {
          if (!(err instanceof CaptureConfigError)) throw err;
          throw await invalidCapture(pod, await identity(), err.message, log);
        }
        const unknownGroups = unknownOwnerGroups(capture, deps.groupFile);
        if (unknownGroups.length > 0) {
          throw await invalidCapture(
            pod,
            await identity(),
            `owner group ${unknownGroups.map((g) => JSON.stringify(g)).join(", ")} is not known on node ${deps.nodeName}: use a numeric GID`,
            log,
          );
        }
        return withNetns(pod, identity, (netns, resolved) => applyIn(pod, identity, capture, netns, resolved, log));
      }),
    refuse: (pod, reason, log) => markUnlessInitialized(pod, "refused", reason, log),
    skip: (pod, reason, log) => markUnlessInitialized(pod, "skipped", reason, log),
    flushEvents: () => events.flush(),
    get pendingEvents() {
      return events.pending;
    },
  };
}

/**
 * A pod marked initialized in this namespace keeps the rules its mark names: an apply of other
 * rules (a replica that decided under an older or newer policy) is refused before anything
 * changes. The same rules pass (a repeat is `unchanged`, or repairs drift); a new namespace (a
 * re-created sandbox) takes whatever the policy says now.
 */
function keepRulesOfInitialized(identity: FoundPod, netnsInode: string, rules: string): void {
  const mark = identity.initializedWith;
  if (mark === undefined || mark.netns !== netnsInode || mark.rules === rules) return;
  throw new Refusal(
    "initialized-with-other-rules",
    `the pod is initialized in network namespace ${netnsInode} with rules ${mark.rules}; these would be ${rules}: what runs keeps its rules (a new sandbox takes the policy's)`,
  );
}

/** A command that failed, or state that cannot be written, as its documented answer (never a 500); anything else as it was. */
function asRefusal(err: unknown): unknown {
  if (err instanceof StateError) return new Refusal("state-unwritable", err.message);
  if (!(err instanceof ApplyError)) return err;
  switch (err.kind) {
    case "netns-gone":
      return new Refusal("netns-not-found", err.message);
    case "node-unavailable":
      return new Refusal("node-unavailable", err.message);
    case "refused":
      return new Refusal("rules-refused", err.message);
  }
}
