// One pod, one policy snapshot: decide, and queue the pods to program (docs/architecture.md §4).
// The HTTP side (server.ts) turns CloudEvents into calls of `reconcilePod` and `resync`; this
// module owns what happens to a pod after that: dedupe, the fresh read before acting, the
// decision, Warning Events, dry-run, and the work queue (work-queue.ts) it fills and empties:
// each queued pod is sent to its node-runner, and one that fails in a way that can pass is
// retried with backoff, read again and decided again first once a second has gone by.
import type { Logger } from "pino";
import { formatIssues, formatWarning } from "../contract/capture-config.ts";
import { BoundedMap } from "../lib/bounded-map.ts";
import { deferredChild } from "../lib/deferred-logger.ts";
import { errorMessage } from "../lib/errors.ts";
import { decide, LEGACY_OPT_IN, releaseDecision, skipDecision, strandedWaiter, type Decision, type DecisionInput, type NamespaceFacts } from "./decision.ts";
import type { DispatchDecision, Dispatcher } from "./dispatch.ts";
import { dispatchFailureLabel, type FunctionMetrics } from "./metrics.ts";
import { proxyContainer, type Pod } from "./pod.ts";
import type { Policy } from "./policy.ts";
import { WorkQueue, type ProcessOutcome } from "./work-queue.ts";

export type PodWarningReason = "NetworkInitFailed" | "CaptureConfigWarning" | "NetworkInitSkipped";

/** Only pods Istio injected carry this label: a resync lists nothing else. */
export const MESH_POD_SELECTOR = "security.istio.io/tlsMode=istio";

/** The function's view of the cluster (functions/kube.ts on a real one). */
export interface ClusterReader {
  /**
   * The API server's pod; with `notOlderThan` (the resource version an event carried) as of
   * that version or later: never staler than what triggered the read.
   */
  getPod(namespace: string, name: string, notOlderThan?: string): Promise<Pod | undefined>;
  getNamespace(name: string): Promise<NamespaceFacts | undefined>;
  /** Candidate pods cluster-wide, page by page (server-side label selector). */
  listPods(labelSelector: string): AsyncIterable<Pod[]>;
  /**
   * A Warning Event on the pod: NetworkInitFailed (invalid annotations, no rules),
   * CaptureConfigWarning (a value Istio reads as false; the pod still gets rules) or
   * NetworkInitSkipped (it carries the waiter but the policy gives it no rules).
   */
  recordPodWarning(pod: Pod, reason: PodWarningReason, message: string): Promise<void>;
}

export type Outcome = "queued" | "skipped" | "dry-run" | "fail-open" | "invalid" | "duplicate" | "failed";
export interface HandledPod {
  readonly pod: string;
  readonly outcome: Outcome;
  readonly reason: string;
  /** The event should be delivered again (the API server or the queue was not available). */
  readonly transient?: boolean;
}

export interface ResyncSummary {
  seen: number;
  queued: number;
  skipped: number;
  failed: number;
}

export interface ReconcilerDeps {
  readonly dispatcher: Pick<Dispatcher, "send">;
  readonly cluster: ClusterReader;
  readonly metrics: FunctionMetrics;
  /** A resync runs at most this often (ms); more requests are answered and ignored. */
  readonly resyncMinIntervalMs?: number;
  readonly now?: () => number;
  /** The policy in force now: a retry that reads its pod again decides under it. */
  readonly policy: () => Policy;
  /**
   * After a dispatch fails in a way that can pass (no answer, 503: a node-runner restarting),
   * it is retried after each of these delays in turn; from one of a second on, the pod is read
   * and decided again first. After the last, the resync catches it. Default: about a minute.
   */
  readonly retryDelaysMs?: readonly number[];
  /** Pods queued at most; more are answered 503 (the source retries, the resync catches them). */
  readonly maxQueuedPods?: number;
}

export const DISPATCH_RETRY_DELAYS_MS: readonly number[] = [100, 200, 400, 1000, 2000, 4000, 8000, 15_000, 30_000];
/** Retries this long after the last send read the pod again first: it may have changed or gone. */
const REREAD_AFTER_MS = 1000;

/** Where a pod came from: the API server (a read or a list) or an event's copy of it. */
export interface PodSource {
  readonly fromApi: boolean;
  readonly deleted?: boolean;
  /** When the event arrived (performance.now()), for the dispatch's log line: how long deciding it took, the pod's read included. */
  readonly receivedAt?: number;
}

/**
 * What the work queue holds per pod: the decision to send (it names the pod) and little else.
 * Not the pod itself: the queue holds up to `maxQueuedPods` keys, and a resync during a burst
 * fills it; whole pods (up to 1.5 MiB each) would not fit in the function's heap.
 */
interface QueuedPod {
  readonly decision: DispatchDecision;
  readonly policyId: string;
  readonly log: Logger;
  readonly queuedAt: number;
  /** From the event's arrival to this decision's queueing (undefined: queued by the resync). */
  readonly decidedMs?: number;
  /** When this decision was last sent (undefined: not yet). */
  sentAt?: number;
}

export interface Reconciler {
  /**
   * Decide for one pod under one policy snapshot. Content that did not come from the API
   * server itself (a Resource-mode event) only decides skips: a pod to act on is read fresh
   * and decided again, and only that read is ever signed.
   */
  reconcilePod(pod: Pod, policy: Policy, log: Logger, source: PodSource): Promise<HandledPod>;
  /** A pod that no longer exists (a delete, or a reference to a pod the API server no longer has). */
  gone(name: string, log: Logger): HandledPod;
  /** Every mesh pod, one page at a time, under one policy snapshot. */
  resync(policy: Policy, log: Logger): Promise<{ summary: ResyncSummary | "rate-limited"; results: HandledPod[] }>;
  /** Pods queued, being sent, or waiting to be retried. */
  readonly queued: number;
  /** Resolves once the queue is empty (retries still waiting are given up: the resync has them). */
  whenIdle(): Promise<void>;
}

export function createReconciler(deps: ReconcilerDeps): Reconciler {
  const { metrics } = deps;
  // uid → the resourceVersion last handled under `handledPolicy`: ApiServerSource may deliver a
  // notification twice. A new policy decides every pod again: the map is emptied (the policy's
  // id kept beside each version doubled what an entry held; this map is per pod).
  const handled = new BoundedMap<string, string>(50_000);
  let handledPolicy: string | undefined;
  // Pods told that their waiter will time out (once per pod and reason).
  const strandedTold = new BoundedMap<string, string>(50_000);
  let lastResync = -Infinity;
  const retryDelaysMs = deps.retryDelaysMs ?? DISPATCH_RETRY_DELAYS_MS;
  const work = new WorkQueue<QueuedPod>({
    maxKeys: deps.maxQueuedPods ?? 10_000,
    retryDelaysMs,
    process: send,
    onGiveUp: (item, failures) => {
      item.log.warn({ retries: failures - 1 }, "no more retries: the resync will catch the pod");
    },
    onSize: (size) => {
      metrics.queueDepth.set(size);
    },
  });

  /** The versions handled under `policy` (emptied when they were handled under another). */
  const handledUnder = (policy: Policy): BoundedMap<string, string> => {
    if (policy.id !== handledPolicy) {
      handled.clear();
      handledPolicy = policy.id;
    }
    return handled;
  };
  const podName = (pod: Pod): string => `${pod.metadata.namespace ?? ""}/${pod.metadata.name ?? ""}`;
  const podLog = (log: Logger, pod: Pod): Logger =>
    deferredChild(log, { pod: { namespace: pod.metadata.namespace, name: pod.metadata.name, uid: pod.metadata.uid } });

  /** Undefined, not awaited, where the namespace is not needed (nearly always: every event takes this path). */
  function namespaceFactsFor(pod: Pod, policy: Policy): Promise<NamespaceFacts | undefined> | undefined {
    // Only the original controller's namespace-level opt-in, for pods Istio did not inject, needs the namespace.
    const injected = proxyContainer(pod) !== undefined && pod.metadata.annotations?.["sidecar.istio.io/status"] !== undefined;
    if (injected || !policy.document.legacyOptIn || pod.metadata.annotations?.[LEGACY_OPT_IN] !== undefined) return undefined;
    return deps.cluster.getNamespace(pod.metadata.namespace ?? "default").catch(() => undefined);
  }

  function timed<D>(how: (input: DecisionInput) => D, pod: Pod, policy: Policy, namespace: NamespaceFacts | undefined, deleted: boolean): D {
    const t0 = performance.now();
    const decision = how({ pod, policy, ...(namespace === undefined ? {} : { namespace }), deleted });
    metrics.decisionDuration.observe((performance.now() - t0) / 1000);
    return decision;
  }

  async function reconcilePod(eventPod: Pod, policy: Policy, log: Logger, source: PodSource): Promise<HandledPod> {
    const deleted = source.deleted ?? false;
    const eventUid = eventPod.metadata.uid ?? "";
    const eventVersion = eventPod.metadata.resourceVersion;
    if (!deleted && eventVersion !== undefined && handledUnder(policy).get(eventUid) === eventVersion) {
      return skipped({ action: "skip", reason: "duplicate" }, podName(eventPod), log, "duplicate");
    }
    const reading = namespaceFactsFor(eventPod, policy);
    const namespace = reading === undefined ? undefined : await reading;
    let pod = eventPod;
    // An event's copy decides skips only; the capture config comes from the API server's pod.
    let decision = timed<Decision | undefined>(source.fromApi ? decide : skipDecision, pod, policy, namespace, deleted);
    if (decision === undefined) {
      let fresh: Pod | undefined;
      try {
        fresh = await deps.cluster.getPod(pod.metadata.namespace ?? "", pod.metadata.name ?? "", pod.metadata.resourceVersion);
      } catch (err) {
        podLog(log, pod).warn({ err: errorMessage(err) }, "cannot read the pod");
        return { pod: podName(pod), outcome: "failed", reason: "api-unavailable", transient: true };
      }
      if (fresh === undefined) return gone(podName(pod), podLog(log, pod));
      if (fresh.metadata.uid !== eventUid)
        podLog(log, pod).warn({ eventUid, apiUid: fresh.metadata.uid }, "the event's pod is not the API server's: deciding on the API server's");
      pod = fresh;
      decision = timed(decide, pod, policy, namespace, deleted);
    }
    const result = act(decision, pod, policy, podLog(log, pod), source.receivedAt);
    const freshVersion = pod.metadata.resourceVersion;
    if (result.transient !== true && freshVersion !== undefined) {
      handledUnder(policy).set(pod.metadata.uid ?? "", freshVersion);
      if (eventVersion !== undefined && eventVersion !== freshVersion) handled.set(eventUid, eventVersion);
    }
    return result;
  }

  function gone(name: string, log: Logger): HandledPod {
    return skipped({ action: "skip", reason: "deleted" }, name, log);
  }

  function skipped(decision: Decision & { action: "skip" }, name: string, log: Logger, outcome: Outcome = "skipped"): HandledPod {
    metrics.decisions.inc({ action: decision.action, reason: decision.reason });
    log.debug({ decision: decision.action, reason: decision.reason }, "skipped");
    return { pod: name, outcome, reason: decision.reason };
  }

  function warnStranded(pod: Pod, message: string, log: Logger): void {
    const uid = pod.metadata.uid ?? "";
    if (strandedTold.get(uid) === message) return;
    strandedTold.set(uid, message);
    log.warn({ detail: message }, "pod carries the waiter but will get no rules");
    warnPod(pod, "NetworkInitSkipped", message, log);
  }

  /** A Warning Event on the pod, recorded after the answer; a failure is only logged. */
  function warnPod(pod: Pod, reason: PodWarningReason, message: string, log: Logger): void {
    deps.cluster.recordPodWarning(pod, reason, message).catch((err: unknown) => {
      log.warn({ err: errorMessage(err), reason }, "could not record the Event");
    });
  }

  function act(decision: Decision, pod: Pod, policy: Policy, log: Logger, receivedAt?: number): HandledPod {
    const name = podName(pod);
    const stranded = strandedWaiter(decision, pod, policy.document.mode);
    if (stranded !== undefined) warnStranded(pod, stranded, log);
    // Skipped for good (or fail-open) while its waiter waits: its node-runner marks it skipped, and it starts.
    const release = releaseDecision(decision, pod, policy.document.mode);
    if (release !== undefined) {
      metrics.decisions.inc({ action: release.action, reason: release.reason });
      return queue(release, pod, policy, log, receivedAt);
    }
    if (decision.action === "skip") return skipped(decision, name, log);
    metrics.decisions.inc({ action: decision.action, reason: decision.reason });
    if (decision.action === "error" || decision.action === "refuse") {
      log.warn({ decision: decision.action, reason: decision.reason, detail: decision.detail }, "pod refused: invalid capture configuration");
      if (policy.document.mode !== "enforce") return { pod: name, outcome: "invalid", reason: decision.detail };
      warnPod(pod, "NetworkInitFailed", `invalid capture configuration: ${decision.detail}`, log);
      // Its waiter is told at once, through its node-runner's mark.
      if (decision.action === "refuse") queue(decision, pod, policy, log, receivedAt);
      return { pod: name, outcome: "invalid", reason: decision.detail };
    }
    if (policy.document.mode !== "enforce") {
      // Dry-run, or fail-open for a pod that was not released (no waiter, or rules already there): nothing is applied.
      const mode = policy.document.mode;
      log.info({ decision: "apply", reason: decision.reason, node: decision.node, policy: policy.id, capture: decision.capture }, `${mode}: would apply`);
      return { pod: name, outcome: mode, reason: decision.reason };
    }
    if (decision.warnings.length > 0) {
      const message = formatIssues(decision.warnings, formatWarning);
      log.warn({ detail: message }, "capture configuration warning");
      warnPod(pod, "CaptureConfigWarning", message, log);
    }
    return queue(decision, pod, policy, log, receivedAt);
  }

  function queue(decision: DispatchDecision, pod: Pod, policy: Policy, log: Logger, receivedAt: number | undefined): HandledPod {
    const queuedAt = performance.now();
    const decidedMs = receivedAt === undefined ? undefined : Math.round(queuedAt - receivedAt);
    const offered = work.add(decision.pod.uid, { decision, policyId: policy.id, log, queuedAt, ...(decidedMs === undefined ? {} : { decidedMs }) });
    if (offered === "full") {
      metrics.queueFull.inc();
      log.warn({ queued: work.size }, "dispatch queue full");
      return { pod: podName(pod), outcome: "failed", reason: "queue-full", transient: true };
    }
    return { pod: podName(pod), outcome: "queued", reason: decision.reason };
  }

  /**
   * The queue's consumer: send a pod's decision to its node-runner. A retry a second or more
   * after the last send reads the pod again and decides it again under the policy now in force
   * (queueing whatever that decides; this item is then done).
   */
  async function send(item: QueuedPod, retry: number): Promise<ProcessOutcome> {
    const ref = item.decision.pod;
    if (retry > 0 && item.sentAt !== undefined && performance.now() - item.sentAt >= REREAD_AFTER_MS) {
      metrics.redispatches.inc();
      // The API server not answering: the decision as it was is sent again.
      const fresh = await deps.cluster.getPod(ref.namespace, ref.name).then(
        (pod) => ({ pod }),
        () => undefined,
      );
      if (fresh !== undefined) {
        if (fresh.pod?.metadata.uid !== ref.uid) return { done: true };
        const policy = deps.policy();
        const decision = timed(decide, fresh.pod, policy, await namespaceFactsFor(fresh.pod, policy), false);
        // Nothing to send any more (initialized meanwhile, skipped or dry-run under the policy now): said as any decision is.
        if (decision.action === "skip" || decision.action === "error" || policy.document.mode !== "enforce") {
          act(decision, fresh.pod, policy, item.log);
          return { done: true };
        }
        item = { ...item, decision, policyId: policy.id };
      }
    }
    const sentAt = (item.sentAt = performance.now());
    const result = await deps.dispatcher.send(item.decision, item.policyId, () => {
      metrics.queueAge.observe((performance.now() - item.queuedAt) / 1000);
    });
    const answeredAt = performance.now();
    metrics.dispatchDuration.observe({ result: result.ok ? result.result : "failed" }, (answeredAt - item.queuedAt) / 1000);
    // Where a late pod waited: deciding its event (the pod's read), in the queue (since it was
    // first queued), or for its node-runner.
    const waited = { decidedMs: item.decidedMs, queuedMs: Math.round(sentAt - item.queuedAt), sendMs: Math.round(answeredAt - sentAt) };
    if (result.ok) {
      item.log.info(
        { decision: item.decision.action, reason: item.decision.reason, node: item.decision.node, result: result.result, retries: retry, ...waited },
        `dispatched: ${result.result}`,
      );
      return { done: true };
    }
    // Not done: the same notification, redelivered, a retry or the resync must try again.
    handled.delete(ref.uid);
    metrics.dispatchFailures.inc({ status: String(result.status), reason: dispatchFailureLabel(result.reason) });
    item.log.warn(
      { decision: item.decision.action, node: item.decision.node, status: result.status, reason: result.reason, retries: retry, ...waited },
      "dispatch failed",
    );
    if (!result.retryable) return { done: true };
    return { done: false, ...(result.retryAfterMs === undefined ? {} : { retryAfterMs: result.retryAfterMs }) };
  }

  async function resync(policy: Policy, log: Logger): Promise<{ summary: ResyncSummary | "rate-limited"; results: HandledPod[] }> {
    // A sweep lists every mesh pod: one per interval, however many ticks arrive.
    const now = (deps.now ?? Date.now)();
    if (now - lastResync < (deps.resyncMinIntervalMs ?? 30_000)) {
      metrics.resyncsLimited.inc();
      log.info({ lastResyncMsAgo: now - lastResync }, "resync skipped: one ran less than the minimum interval ago");
      return { summary: "rate-limited", results: [] };
    }
    lastResync = now;
    const summary: ResyncSummary = { seen: 0, queued: 0, skipped: 0, failed: 0 };
    const results: HandledPod[] = [];
    try {
      for await (const page of deps.cluster.listPods(MESH_POD_SELECTOR)) {
        for (const pod of page) {
          const r = await reconcilePod(pod, policy, log, { fromApi: true });
          summary.seen++;
          if (r.outcome === "queued") summary.queued++;
          else if (r.outcome === "failed") summary.failed++;
          else summary.skipped++;
          if (r.outcome !== "skipped" && r.outcome !== "duplicate") results.push(r);
        }
      }
    } catch (err) {
      log.warn({ err: errorMessage(err), ...summary }, "resync could not list pods");
      return { summary, results: [...results, { pod: "*", outcome: "failed", reason: "list-failed", transient: true }] };
    }
    log.info(summary, "resync done");
    // Failed pods are caught by the next tick: the resync itself succeeded.
    return { summary, results: results.map((r) => ({ ...r, transient: false })) };
  }

  return {
    reconcilePod,
    gone,
    resync,
    get queued() {
      return work.size;
    },
    whenIdle: () => work.whenIdle(),
  };
}
