// The decision function's HTTP side: CloudEvents in (binary, structured and batch mode),
// ApiServerSource pod events (Resource and Reference mode) and PingSource resync ticks.
// Answers: 2xx once an event is decided and, for pods to program, queued (the dispatch runs
// after the answer: the source delivers one event at a time and waits for each); 503 when a
// failure is transient or the queue is full (the adapter retries, the resync catches the
// rest); 400 when an event can never be processed.
import express, { type Request, type Response } from "express";
import { HTTP, type CloudEventV1 } from "cloudevents";
import type { Logger } from "pino";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { formatWarning } from "../contract/capture-config.ts";
import { decide, LEGACY_OPT_IN, strandedWaiter, type Decision, type NamespaceFacts } from "./decision.ts";
import type { Dispatcher, DispatchResult } from "./dispatch.ts";
import { parsePod, PodManifestError, proxyContainer, type Pod } from "./pod.ts";
import type { Policy } from "./policy.ts";
import type { SenderAuthenticator } from "./sender-auth.ts";
import { errorMessage } from "../contract/errors.ts";

export type PodWarningReason = "NetworkInitFailed" | "CaptureConfigWarning" | "NetworkInitSkipped";

export const MAX_EVENT_BYTES = 1024 * 1024;
export const MESH_POD_SELECTOR = "security.istio.io/tlsMode=istio";

export interface ClusterReader {
  getPod(namespace: string, name: string): Promise<Pod | undefined>;
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

export function createFunctionMetrics(options: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "podnet_function_" });
  return {
    registry,
    events: new Counter({ name: "podnet_function_events_total", help: "CloudEvents by type and outcome.", labelNames: ["type", "outcome"], registers: [registry] }),
    decisions: new Counter({ name: "podnet_function_decisions_total", help: "Decisions by action and reason.", labelNames: ["action", "reason"], registers: [registry] }),
    decisionDuration: new Histogram({ name: "podnet_function_decision_duration_seconds", help: "Time to decide one pod.", buckets: [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01], registers: [registry] }),
    dispatchDuration: new Histogram({ name: "podnet_function_dispatch_duration_seconds", help: "Time from queueing a pod to its dispatch's outcome, retries included.", labelNames: ["result"], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [registry] }),
    queueAge: new Histogram({ name: "podnet_function_dispatch_queue_age_seconds", help: "Time a decision waited in the dispatch queue before it was sent.", buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5], registers: [registry] }),
    queueDepth: new Gauge({ name: "podnet_function_dispatch_queue_pods", help: "Pods queued or in flight to node-runners.", registers: [registry] }),
    queueFull: new Counter({ name: "podnet_function_dispatch_queue_full_total", help: "Pods not queued because the dispatch queue was full (answered 503).", registers: [registry] }),
    dispatchFailures: new Counter({ name: "podnet_function_dispatch_failures_total", help: "Failed dispatches by HTTP status (0: no answer) and reason.", labelNames: ["status", "reason"], registers: [registry] }),
    policyReloadFailures: new Counter({ name: "podnet_function_policy_reload_failures_total", help: "Policy documents refused (the last good policy stays).", registers: [registry] }),
    authFailures: new Counter({ name: "podnet_function_auth_failures_total", help: "Events refused because the sender is not authenticated or not allowed, by reason.", labelNames: ["reason"], registers: [registry] }),
    resyncsLimited: new Counter({ name: "podnet_function_resyncs_rate_limited_total", help: "Resync requests ignored because one ran less than the minimum interval ago.", registers: [registry] }),
    policyInfo: new Gauge({ name: "podnet_function_policy_info", help: "The policy in force (value 1).", labelNames: ["id", "mode"], registers: [registry] }),
  };
}
export type FunctionMetrics = ReturnType<typeof createFunctionMetrics>;

export interface FunctionDeps {
  readonly policy: () => Policy;
  readonly dispatcher: Pick<Dispatcher, "offer" | "busy">;
  readonly cluster: ClusterReader;
  readonly log: Logger;
  readonly metrics: FunctionMetrics;
  /** Who may send events (Knative's OIDC sender identity); undefined: anyone (not for production). */
  readonly auth?: SenderAuthenticator;
  /** A resync runs at most this often (ms); more PingSource events are answered and ignored. */
  readonly resyncMinIntervalMs?: number;
  readonly now?: () => number;
  /** Why the function cannot work yet (e.g. no usable signing key), or undefined when it can. */
  readonly notReady?: () => string | undefined;
}

type Outcome = "queued" | "skipped" | "dry-run" | "invalid" | "duplicate" | "failed";
interface HandledPod {
  readonly pod: string;
  readonly outcome: Outcome;
  readonly reason: string;
  readonly transient?: boolean;
}

interface ResyncSummary {
  seen: number;
  queued: number;
  skipped: number;
  failed: number;
}

class BadEvent extends Error {}

const POD_EVENT = /^dev\.knative\.apiserver\.(resource|ref)\.(add|update|delete)$/;
const PING_EVENT = "dev.knative.sources.ping";

export function createFunctionApp(deps: FunctionDeps): express.Express & { inFlight: () => number } {
  const { log, metrics } = deps;
  // uid → "resourceVersion policy" last handled: ApiServerSource may deliver a notification
  // twice. A new policy decides again.
  const handled = new Map<string, string>();
  let inFlight = 0;

  const app = express() as express.Express & { inFlight: () => number };
  app.inFlight = () => inFlight;
  app.disable("x-powered-by");
  app.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  app.get("/readyz", (_req, res) => {
    const why = deps.notReady?.();
    if (why !== undefined) {
      res.status(503).json({ status: "not ready", reason: why });
      return;
    }
    res.json({ status: "ready", policy: deps.policy().id });
  });
  app.get("/metrics", async (_req, res) => {
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  // Dead-letter sink of the Broker variant: record what could not be delivered, accept it.
  app.post("/dead-letter", express.raw({ type: () => true, limit: MAX_EVENT_BYTES }), (req: Request, res: Response) => {
    const type = typeof req.headers["ce-type"] === "string" ? req.headers["ce-type"] : "unknown";
    metrics.events.inc({ type, outcome: "dead-letter" });
    log.warn({ ceId: req.headers["ce-id"], ceType: type, ceSubject: req.headers["ce-subject"] }, "dead letter: an event was not delivered");
    res.status(202).end();
  });

  app.post("/", express.raw({ type: () => true, limit: MAX_EVENT_BYTES }), async (req: Request, res: Response) => {
    inFlight++;
    try {
      if (deps.auth !== undefined) {
        const verdict = await deps.auth.authenticate(req.headers.authorization);
        if (!verdict.ok) {
          metrics.authFailures.inc({ reason: verdict.reason });
          log.warn({ reason: verdict.reason, detail: verdict.detail }, "refused: sender not authenticated");
          // The API server could not be asked: let the source retry.
          const status = verdict.reason === "auth-unavailable" ? 503 : 401;
          res.status(status).json({ error: status === 401 ? "unauthorized" : "transient failure", reason: verdict.reason, detail: verdict.detail });
          return;
        }
      }
      let events: CloudEventV1<unknown>[];
      try {
        const body = Buffer.isBuffer(req.body) ? req.body.toString("utf8") : "";
        const parsed = HTTP.toEvent({ headers: req.headers, body });
        events = Array.isArray(parsed) ? parsed : [parsed];
      } catch (err) {
        metrics.events.inc({ type: "unknown", outcome: "malformed" });
        log.warn({ err: errorMessage(err) }, "refused: not a CloudEvent");
        res.status(400).json({ error: "not a CloudEvent", detail: errorMessage(err) });
        return;
      }
      const results: HandledPod[] = [];
      let resyncSummary: ResyncSummary | "rate-limited" | undefined;
      let status = 200;
      for (const event of events) {
        const elog = log.child({ ceId: event.id, ceType: event.type });
        try {
          let r: HandledPod[];
          if (event.type === PING_EVENT) {
            const done = await resync(elog);
            resyncSummary = done.summary;
            r = done.results;
          } else {
            r = [await handlePodEvent(event, elog)];
          }
          results.push(...r);
          metrics.events.inc({ type: event.type, outcome: r.some((x) => x.transient === true) ? "transient" : "handled" });
          if (r.some((x) => x.transient === true)) status = Math.max(status, 503);
        } catch (err) {
          if (!(err instanceof BadEvent)) throw err;
          metrics.events.inc({ type: event.type, outcome: "malformed" });
          elog.warn({ detail: err.message }, "refused: event cannot be processed");
          status = Math.max(status, 400);
          results.push({ pod: event.subject ?? "", outcome: "failed", reason: err.message });
        }
      }
      res.status(status).json(resyncSummary === undefined ? { results } : { resync: resyncSummary, results });
    } catch (err) {
      log.error({ err }, "event handling failed");
      res.status(503).json({ error: "transient failure", detail: errorMessage(err) });
    } finally {
      inFlight--;
    }
  });

  // Express recognises an error handler by its four parameters.
  app.use((err: { type?: string; message?: string }, _req: Request, res: Response, _next: express.NextFunction) => {
    const tooLarge = err.type === "entity.too.large";
    metrics.events.inc({ type: "unknown", outcome: tooLarge ? "too-large" : "malformed" });
    log.warn({ err: err.message }, tooLarge ? "refused: event too large" : "refused: unreadable request");
    res.status(tooLarge ? 413 : 400).json({ error: tooLarge ? "event too large" : "bad request" });
  });

  async function handlePodEvent(event: CloudEventV1<unknown>, elog: Logger): Promise<HandledPod> {
    const match = POD_EVENT.exec(event.type);
    if (match === null) throw new BadEvent(`unsupported event type ${event.type}`);
    const [, mode, verb] = match;
    let pod: Pod | undefined;
    if (mode === "ref") {
      const ref = event.data as { kind?: unknown; namespace?: unknown; name?: unknown } | undefined;
      if (ref?.kind !== "Pod" || typeof ref.namespace !== "string" || typeof ref.name !== "string") throw new BadEvent("reference event without a Pod reference");
      if (verb === "delete") return record({ action: "skip", reason: "deleted" }, `${ref.namespace}/${ref.name}`, elog);
      try {
        pod = await deps.cluster.getPod(ref.namespace, ref.name);
      } catch (err) {
        elog.warn({ err: errorMessage(err) }, "cannot read the referenced pod");
        return { pod: `${ref.namespace}/${ref.name}`, outcome: "failed", reason: "api-unavailable", transient: true };
      }
      if (pod === undefined) return record({ action: "skip", reason: "deleted" }, `${ref.namespace}/${ref.name}`, elog);
    } else {
      try {
        pod = parsePod(typeof event.data === "string" ? JSON.parse(event.data) : event.data);
      } catch (err) {
        throw new BadEvent(err instanceof PodManifestError ? err.message : "event data is not a Pod");
      }
    }
    // Resource mode carries the pod as the sender saw it: a trigger, not the truth.
    return handlePod(pod, elog, { deleted: verb === "delete", fromApi: mode === "ref" });
  }

  /**
   * Decide for one pod under one policy snapshot. Content that did not come from the API
   * server itself (a Resource-mode event) only decides skips: a pod to act on is read fresh
   * and decided again, and only that read is ever signed.
   */
  async function handlePod(eventPod: Pod, elog: Logger, from: { deleted?: boolean; fromApi: boolean }): Promise<HandledPod> {
    const deleted = from.deleted ?? false;
    const policy = deps.policy();
    let pod = eventPod;
    const name = `${pod.metadata.namespace ?? ""}/${pod.metadata.name ?? ""}`;
    let uid = pod.metadata.uid ?? "";
    let plog = elog.child({ pod: { namespace: pod.metadata.namespace, name: pod.metadata.name, uid } });
    const rv = pod.metadata.resourceVersion === undefined ? undefined : `${pod.metadata.resourceVersion} ${policy.id}`;
    if (!deleted && rv !== undefined && handled.get(uid) === rv) {
      metrics.decisions.inc({ action: "skip", reason: "duplicate" });
      return { pod: name, outcome: "duplicate", reason: "duplicate" };
    }
    let namespace: NamespaceFacts | undefined;
    const injected = proxyContainer(pod) !== undefined && pod.metadata.annotations?.["sidecar.istio.io/status"] !== undefined;
    if (!injected && policy.document.legacyOptIn && pod.metadata.annotations?.[LEGACY_OPT_IN] === undefined) {
      // Only the original controller's namespace-level opt-in, for pods Istio did not inject, needs the namespace.
      namespace = await deps.cluster.getNamespace(pod.metadata.namespace ?? "default").catch(() => undefined);
    }
    const t0 = performance.now();
    let decision = decide({ pod, policy, ...(namespace === undefined ? {} : { namespace }), deleted });
    metrics.decisionDuration.observe((performance.now() - t0) / 1000);
    if (decision.action !== "skip" && !from.fromApi) {
      let fresh: Pod | undefined;
      try {
        fresh = await deps.cluster.getPod(pod.metadata.namespace ?? "", pod.metadata.name ?? "");
      } catch (err) {
        plog.warn({ err: errorMessage(err) }, "cannot read the pod");
        return { pod: name, outcome: "failed", reason: "api-unavailable", transient: true };
      }
      if (fresh === undefined) return record({ action: "skip", reason: "deleted" }, name, plog);
      if (fresh.metadata.uid !== uid) plog.warn({ eventUid: uid, apiUid: fresh.metadata.uid }, "the event's pod is not the API server's: deciding on the API server's");
      pod = fresh;
      uid = pod.metadata.uid ?? "";
      plog = elog.child({ pod: { namespace: pod.metadata.namespace, name: pod.metadata.name, uid } });
      decision = decide({ pod, policy, ...(namespace === undefined ? {} : { namespace }), deleted });
    }
    const result = act(decision, pod, name, policy, plog);
    const freshRv = pod.metadata.resourceVersion === undefined ? undefined : `${pod.metadata.resourceVersion} ${policy.id}`;
    if (result.transient !== true && freshRv !== undefined) {
      remember(uid, freshRv);
      if (rv !== undefined && rv !== freshRv) remember(eventPod.metadata.uid ?? "", rv);
    }
    return result;
  }

  function remember(uid: string, rv: string): void {
    handled.delete(uid);
    handled.set(uid, rv);
    if (handled.size > 50_000) handled.delete(handled.keys().next().value ?? "");
  }

  // Pods told that their waiter will time out (once per pod and reason).
  const strandedTold = new Map<string, string>();
  function warnStranded(pod: Pod, message: string, plog: Logger): void {
    const uid = pod.metadata.uid ?? "";
    if (strandedTold.get(uid) === message) return;
    strandedTold.delete(uid);
    strandedTold.set(uid, message);
    if (strandedTold.size > 50_000) strandedTold.delete(strandedTold.keys().next().value ?? "");
    plog.warn({ detail: message }, "pod carries the waiter but will get no rules");
    warnPod(pod, "NetworkInitSkipped", message, plog);
  }

  /** A Warning Event on the pod, recorded after the answer; a failure is only logged. */
  function warnPod(pod: Pod, reason: PodWarningReason, message: string, plog: Logger): void {
    deps.cluster.recordPodWarning(pod, reason, message).catch((err: unknown) => {
      plog.warn({ err: errorMessage(err), reason }, "could not record the Event");
    });
  }

  function record(decision: Decision, name: string, plog: Logger): HandledPod {
    metrics.decisions.inc({ action: decision.action, reason: decision.reason });
    plog.debug({ decision: decision.action, reason: decision.reason }, "skipped");
    return { pod: name, outcome: "skipped", reason: decision.reason };
  }

  function act(decision: Decision, pod: Pod, name: string, policy: Policy, plog: Logger): HandledPod {
    const stranded = strandedWaiter(decision, pod, policy.document.mode);
    if (stranded !== undefined) warnStranded(pod, stranded, plog);
    if (decision.action === "skip") return record(decision, name, plog);
    metrics.decisions.inc({ action: decision.action, reason: decision.reason });
    if (decision.action === "error") {
      plog.warn({ decision: "error", reason: decision.reason, detail: decision.detail }, "pod refused: invalid capture configuration");
      if (policy.document.mode === "enforce") warnPod(pod, "NetworkInitFailed", `invalid capture configuration: ${decision.detail}`, plog);
      return { pod: name, outcome: "invalid", reason: decision.detail };
    }
    if (policy.document.mode === "dry-run") {
      plog.info({ decision: "apply", reason: decision.reason, node: decision.node, policy: policy.id, capture: decision.capture }, "dry-run: would apply");
      return { pod: name, outcome: "dry-run", reason: decision.reason };
    }
    if (decision.warnings.length > 0) {
      const message = decision.warnings.map(formatWarning).join("; ");
      plog.warn({ warnings: decision.warnings }, "capture configuration warning");
      warnPod(pod, "CaptureConfigWarning", message, plog);
    }
    const t0 = performance.now();
    const uid = pod.metadata.uid ?? "";
    const offered = deps.dispatcher.offer(decision, policy.id, (result: DispatchResult) => {
      metrics.queueDepth.set(deps.dispatcher.busy);
      metrics.dispatchDuration.observe({ result: result.ok ? result.result : "failed" }, (performance.now() - t0) / 1000);
      if (result.ok) {
        plog.info({ decision: "apply", reason: decision.reason, node: decision.node, result: result.result, attempts: result.attempts }, `dispatched: ${result.result}`);
        return;
      }
      // Not done: the same notification, redelivered, or the resync must try again.
      handled.delete(uid);
      metrics.dispatchFailures.inc({ status: String(result.status), reason: result.reason });
      plog.warn({ decision: "apply", node: decision.node, status: result.status, reason: result.reason, attempts: result.attempts }, "dispatch failed");
    });
    metrics.queueDepth.set(deps.dispatcher.busy);
    if (offered === "full") {
      metrics.queueFull.inc();
      plog.warn({ queued: deps.dispatcher.busy }, "dispatch queue full");
      return { pod: name, outcome: "failed", reason: "queue-full", transient: true };
    }
    return { pod: name, outcome: "queued", reason: decision.reason };
  }

  let lastResync = -Infinity;
  async function resync(elog: Logger): Promise<{ summary: ResyncSummary | "rate-limited"; results: HandledPod[] }> {
    // A sweep lists every mesh pod: one per interval, however many ticks arrive.
    const now = (deps.now ?? Date.now)();
    if (now - lastResync < (deps.resyncMinIntervalMs ?? 30_000)) {
      metrics.resyncsLimited.inc();
      elog.info({ lastResyncMsAgo: now - lastResync }, "resync skipped: one ran less than the minimum interval ago");
      return { summary: "rate-limited", results: [] };
    }
    lastResync = now;
    const summary: ResyncSummary = { seen: 0, queued: 0, skipped: 0, failed: 0 };
    const results: HandledPod[] = [];
    try {
      for await (const page of deps.cluster.listPods(MESH_POD_SELECTOR)) {
        for (const pod of page) {
          const r = await handlePod(pod, elog, { fromApi: true });
          summary.seen++;
          if (r.outcome === "queued") summary.queued++;
          else if (r.outcome === "failed") summary.failed++;
          else summary.skipped++;
          if (r.outcome !== "skipped" && r.outcome !== "duplicate") results.push(r);
        }
      }
    } catch (err) {
      elog.warn({ err: errorMessage(err), ...summary }, "resync could not list pods");
      return { summary, results: [...results, { pod: "*", outcome: "failed", reason: "list-failed", transient: true }] };
    }
    elog.info(summary, "resync done");
    // Failed pods are caught by the next tick: the resync itself succeeded.
    return { summary, results: results.map((r) => ({ ...r, transient: false })) };
  }

  return app;
}
