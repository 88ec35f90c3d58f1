// One pod, one policy snapshot: decide, and queue the pods to program (docs/architecture.md §4).
// The HTTP side (server.ts) turns CloudEvents into calls of `reconcilePod` and `resync`; this
// module owns what happens to a pod after that: dedupe, the fresh read before acting, the
// decision, Warning Events, dry-run and the dispatch queue.
import type { Logger } from "pino";
import { formatIssues, formatWarning } from "../contract/capture-config.ts";
import { BoundedMap } from "../lib/bounded-map.ts";
import { errorMessage } from "../lib/errors.ts";
import { decide, LEGACY_OPT_IN, skipDecision, strandedWaiter, type Decision, type DecisionInput, type NamespaceFacts } from "./decision.ts";
import type { Dispatcher, DispatchResult } from "./dispatch.ts";
import type { FunctionMetrics } from "./metrics.ts";
import { proxyContainer, type Pod } from "./pod.ts";
import type { Policy } from "./policy.ts";

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

export type Outcome = "queued" | "skipped" | "dry-run" | "invalid" | "duplicate" | "failed";
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
  readonly dispatcher: Pick<Dispatcher, "offer" | "busy">;
  readonly cluster: ClusterReader;
  readonly metrics: FunctionMetrics;
  /** A resync runs at most this often (ms); more requests are answered and ignored. */
  readonly resyncMinIntervalMs?: number;
  readonly now?: () => number;
  /**
   * After a dispatch fails in a way that can pass (no answer, 503: a node-runner restarting),
   * the pod is read again and reconciled after each of these delays in turn, under the policy
   * then in force; after the last, the resync catches it. Default: about a minute in all.
   */
  readonly redispatch?: { readonly policy: () => Policy; readonly delaysMs?: readonly number[] };
}

export const REDISPATCH_DELAYS_MS: readonly number[] = [1000, 2000, 4000, 8000, 15_000, 30_000];

/** Where a pod came from: the API server (a read or a list) or an event's copy of it. */
export interface PodSource {
  readonly fromApi: boolean;
  readonly deleted?: boolean;
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
}

export function createReconciler(deps: ReconcilerDeps): Reconciler {
  const { metrics } = deps;
  // uid → "resourceVersion policy" last handled: ApiServerSource may deliver a notification
  // twice. A new policy decides again.
  const handled = new BoundedMap<string, string>(50_000);
  // Pods told that their waiter will time out (once per pod and reason).
  const strandedTold = new BoundedMap<string, string>(50_000);
  let lastResync = -Infinity;
  // uid → redispatches so far, for pods whose dispatch failed and may pass later.
  const redispatches = new BoundedMap<string, number>(50_000);

  const versionKey = (pod: Pod, policy: Policy): string | undefined =>
    pod.metadata.resourceVersion === undefined ? undefined : `${pod.metadata.resourceVersion} ${policy.id}`;
  const podName = (pod: Pod): string => `${pod.metadata.namespace ?? ""}/${pod.metadata.name ?? ""}`;
  const podLog = (log: Logger, pod: Pod): Logger => log.child({ pod: { namespace: pod.metadata.namespace, name: pod.metadata.name, uid: pod.metadata.uid } });

  async function namespaceFactsFor(pod: Pod, policy: Policy): Promise<NamespaceFacts | undefined> {
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
    const eventVersion = versionKey(eventPod, policy);
    if (!deleted && eventVersion !== undefined && handled.get(eventUid) === eventVersion) {
      return skipped({ action: "skip", reason: "duplicate" }, podName(eventPod), log, "duplicate");
    }
    const namespace = await namespaceFactsFor(eventPod, policy);
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
    const result = act(decision, pod, policy, podLog(log, pod));
    const freshVersion = versionKey(pod, policy);
    if (result.transient !== true && freshVersion !== undefined) {
      handled.set(pod.metadata.uid ?? "", freshVersion);
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

  function act(decision: Decision, pod: Pod, policy: Policy, log: Logger): HandledPod {
    const name = podName(pod);
    const stranded = strandedWaiter(decision, pod, policy.document.mode);
    if (stranded !== undefined) warnStranded(pod, stranded, log);
    if (decision.action === "skip") return skipped(decision, name, log);
    metrics.decisions.inc({ action: decision.action, reason: decision.reason });
    if (decision.action === "error") {
      log.warn({ decision: "error", reason: decision.reason, detail: decision.detail }, "pod refused: invalid capture configuration");
      if (policy.document.mode === "enforce") warnPod(pod, "NetworkInitFailed", `invalid capture configuration: ${decision.detail}`, log);
      return { pod: name, outcome: "invalid", reason: decision.detail };
    }
    if (policy.document.mode === "dry-run") {
      log.info({ decision: "apply", reason: decision.reason, node: decision.node, policy: policy.id, capture: decision.capture }, "dry-run: would apply");
      return { pod: name, outcome: "dry-run", reason: decision.reason };
    }
    if (decision.warnings.length > 0) {
      const message = formatIssues(decision.warnings, formatWarning);
      log.warn({ detail: message }, "capture configuration warning");
      warnPod(pod, "CaptureConfigWarning", message, log);
    }
    return queue(decision, pod, policy, log);
  }

  function queue(decision: Decision & { action: "apply" }, pod: Pod, policy: Policy, log: Logger): HandledPod {
    const t0 = performance.now();
    const uid = pod.metadata.uid ?? "";
    const offered = deps.dispatcher.offer(decision, policy.id, (result: DispatchResult) => {
      metrics.queueDepth.set(deps.dispatcher.busy);
      metrics.dispatchDuration.observe({ result: result.ok ? result.result : "failed" }, (performance.now() - t0) / 1000);
      if (result.ok) {
        redispatches.delete(uid);
        log.info(
          { decision: "apply", reason: decision.reason, node: decision.node, result: result.result, attempts: result.attempts },
          `dispatched: ${result.result}`,
        );
        return;
      }
      // Not done: the same notification, redelivered, a redispatch or the resync must try again.
      handled.delete(uid);
      metrics.dispatchFailures.inc({ status: String(result.status), reason: result.reason });
      log.warn({ decision: "apply", node: decision.node, status: result.status, reason: result.reason, attempts: result.attempts }, "dispatch failed");
      if (result.retryable) redispatchLater(pod, log);
      else redispatches.delete(uid);
    });
    metrics.queueDepth.set(deps.dispatcher.busy);
    if (offered === "full") {
      metrics.queueFull.inc();
      log.warn({ queued: deps.dispatcher.busy }, "dispatch queue full");
      return { pod: podName(pod), outcome: "failed", reason: "queue-full", transient: true };
    }
    return { pod: podName(pod), outcome: "queued", reason: decision.reason };
  }

  /** Read the pod again after a pause and reconcile it: its node-runner may be back by then. */
  function redispatchLater(pod: Pod, log: Logger): void {
    const uid = pod.metadata.uid ?? "";
    const done = redispatches.get(uid) ?? 0;
    const delay = (deps.redispatch?.delaysMs ?? REDISPATCH_DELAYS_MS)[done];
    if (deps.redispatch === undefined || delay === undefined) {
      redispatches.delete(uid);
      log.warn({ redispatches: done }, "no more redispatches: the resync will catch the pod");
      return;
    }
    redispatches.set(uid, done + 1);
    metrics.redispatches.inc();
    log.info({ inMs: delay, redispatch: done + 1 }, "will read the pod again and redispatch");
    setTimeout(() => {
      void (async () => {
        // The API server not answering: decide on the pod as last read (it is read again before acting).
        const read = await deps.cluster.getPod(pod.metadata.namespace ?? "", pod.metadata.name ?? "").then(
          (fresh) => ({ fresh, fromApi: true }),
          () => ({ fresh: pod, fromApi: false }),
        );
        if (read.fresh === undefined || read.fresh.metadata.uid !== uid) {
          redispatches.delete(uid);
          return;
        }
        const policy = deps.redispatch?.policy();
        if (policy !== undefined) await reconcilePod(read.fresh, policy, log, { fromApi: read.fromApi });
      })().catch((err: unknown) => {
        log.warn({ err: errorMessage(err) }, "redispatch failed");
      });
    }, delay).unref();
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

  return { reconcilePod, gone, resync };
}
