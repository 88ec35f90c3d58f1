// The decision function's HTTP side: CloudEvents in (binary, structured and batch mode),
// ApiServerSource pod events (Resource and Reference mode) and PingSource resync ticks.
// Answers: 2xx once an event is decided and, for pods to program, queued (the dispatch runs
// after the answer: the source delivers one event at a time and waits for each); 503 when a
// failure is transient or the queue is full (the adapter retries, the resync catches the
// rest); 400 when an event can never be processed.
// A 2xx has no body unless the request asks for one (`Prefer: return=representation`): the
// CloudEvents SDK in Knative's adapters closes a 2xx answer without reading it, and Go then
// drops the connection, so any body there cost the sender a new TCP connection per event.
import express, { type Request, type Response } from "express";
import type { Logger } from "pino";
import { deferredChild } from "../lib/deferred-logger.ts";
import { errorMessage } from "../lib/errors.ts";
import { readCloudEvents, type IncomingEvent } from "./cloudevents.ts";
import type { Dispatcher } from "./dispatch.ts";
import type { FunctionMetrics } from "./metrics.ts";
import { parsePod, PodManifestError, type Pod } from "./pod.ts";
import type { Policy } from "./policy.ts";
import { createReconciler, type ClusterReader, type HandledPod, type Reconciler, type ResyncSummary } from "./reconcile.ts";
import type { SenderAuthenticator } from "./sender-auth.ts";

export const MAX_EVENT_BYTES = 1024 * 1024;

export interface FunctionDeps {
  readonly policy: () => Policy;
  readonly dispatcher: Pick<Dispatcher, "send">;
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
  /** Delays of the retries after a dispatch that can pass failed (default DISPATCH_RETRY_DELAYS_MS). */
  readonly retryDelaysMs?: readonly number[];
  /** Pods queued at most (default 10,000). */
  readonly maxQueuedPods?: number;
}

class BadEvent extends Error {}

/**
 * Whether a request's Prefer header (RFC 7240) asks for the outcome in the answer's body:
 * `return=representation` among its comma-separated preferences (parameters after `;` ignored,
 * the value may be quoted). Anything else, malformed included, is the minimal answer.
 */
export function wantsRepresentation(prefer: string | string[] | undefined): boolean {
  const values = prefer === undefined ? [] : Array.isArray(prefer) ? prefer : [prefer];
  return values.some((header) =>
    header.split(",").some((preference) => {
      const [name = "", value = ""] = (preference.split(";")[0] ?? "").split("=", 2).map((part) => part.trim());
      return name.toLowerCase() === "return" && value.replace(/^"(.*)"$/, "$1").toLowerCase() === "representation";
    }),
  );
}

const POD_EVENT = /^dev\.knative\.apiserver\.(resource|ref)\.(add|update|delete)$/;
const PING_EVENT = "dev.knative.sources.ping";

/** An event type as a metric label: the types the function handles, every other one "other" (a sender names the type; labels must stay few). */
export function eventTypeLabel(type: string): string {
  return type === PING_EVENT || POD_EVENT.test(type) ? type : "other";
}

/**
 * Refused senders, logged once a minute per reason and detail with how many were refused since:
 * a misconfigured source (OIDC off, no audience) sends every event, and its one cause should
 * read as one line, not a stream. The metric counts each refusal.
 */
class RefusalLog {
  private readonly last = new Map<string, { at: number; refused: number }>();
  constructor(
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  warn(reason: string, detail: string): void {
    const key = `${reason}\n${detail}`;
    const seen = this.last.get(key);
    const now = this.now();
    if (seen !== undefined && now - seen.at < 60_000) {
      seen.refused++;
      return;
    }
    // Bounded: one entry per reason and detail; details of a few kinds (sender names, audiences).
    if (this.last.size >= 256) this.last.clear();
    this.last.set(key, { at: now, refused: 0 });
    this.log.warn({ reason, detail, refusedSinceLastLine: seen?.refused ?? 0 }, "refused: sender not authenticated");
  }
}

/** A header as a log field: at most 256 characters of one value. */
function bounded(value: string | string[] | undefined): string | undefined {
  const text = Array.isArray(value) ? value.join(", ") : value;
  return text === undefined || text.length <= 256 ? text : `${text.slice(0, 256)}…`;
}

/** The function's app, with what its drain on SIGTERM needs: events in flight, and the work queue. */
export type FunctionApp = express.Express & { inFlight: () => number; queue: Pick<Reconciler, "queued" | "whenIdle" | "resync"> };

export function createFunctionApp(deps: FunctionDeps): FunctionApp {
  const { log, metrics } = deps;
  const refusalLog = new RefusalLog(log);
  const reconciler = createReconciler({
    dispatcher: deps.dispatcher,
    cluster: deps.cluster,
    metrics,
    ...(deps.resyncMinIntervalMs === undefined ? {} : { resyncMinIntervalMs: deps.resyncMinIntervalMs }),
    ...(deps.now === undefined ? {} : { now: deps.now }),
    policy: deps.policy,
    ...(deps.retryDelaysMs === undefined ? {} : { retryDelaysMs: deps.retryDelaysMs }),
    ...(deps.maxQueuedPods === undefined ? {} : { maxQueuedPods: deps.maxQueuedPods }),
  });
  let inFlight = 0;

  const app = express() as FunctionApp;
  app.inFlight = () => inFlight;
  app.queue = reconciler;
  app.disable("x-powered-by");
  app.disable("etag"); // no client revalidates an answer: no hash of every body
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

  /**
   * The sender, authenticated from the headers before the body is read: whoever is refused
   * has no body buffered (what it still sends is discarded) and creates no state. True when it may go on.
   */
  async function authenticated(req: Request, res: Response): Promise<boolean> {
    if (deps.auth === undefined) return true;
    const verdict = await deps.auth.authenticate(req.headers.authorization);
    if (verdict.ok) return true;
    metrics.authFailures.inc({ reason: verdict.reason });
    refusalLog.warn(verdict.reason, verdict.detail);
    // The API server could not be asked: let the source retry.
    const status = verdict.reason === "auth-unavailable" ? 503 : 401;
    res.status(status).json({ error: status === 401 ? "unauthorized" : "transient failure", reason: verdict.reason, detail: verdict.detail });
    return false;
  }
  // Express 5 passes a rejected middleware's error on.
  const senderFirst = async (req: Request, res: Response, next: express.NextFunction): Promise<void> => {
    if (await authenticated(req, res)) next();
  };

  // Dead-letter sink of the Broker variant: record what could not be delivered, accept it.
  app.post("/dead-letter", senderFirst, express.raw({ type: () => true, limit: MAX_EVENT_BYTES }), (req: Request, res: Response) => {
    const type = typeof req.headers["ce-type"] === "string" ? req.headers["ce-type"] : "unknown";
    metrics.events.inc({ type: eventTypeLabel(type), outcome: "dead-letter" });
    log.warn(
      { ceId: bounded(req.headers["ce-id"]), ceType: bounded(type), ceSubject: bounded(req.headers["ce-subject"]) },
      "dead letter: an event was not delivered",
    );
    res.status(202).end();
  });

  app.post("/", senderFirst, express.raw({ type: () => true, limit: MAX_EVENT_BYTES }), async (req: Request, res: Response) => {
    const receivedAt = performance.now();
    inFlight++;
    try {
      let events: IncomingEvent[];
      try {
        events = readCloudEvents(req.headers, Buffer.isBuffer(req.body) ? req.body.toString("utf8") : "");
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
        const elog = deferredChild(log, { ceId: event.id, ceType: event.type });
        // One policy snapshot per event: what is decided is what is signed.
        const policy = deps.policy();
        try {
          let r: HandledPod[];
          if (event.type === PING_EVENT) {
            const done = await reconciler.resync(policy, elog);
            resyncSummary = done.summary;
            r = done.results;
          } else {
            r = [await handlePodEvent(event, policy, elog, receivedAt)];
          }
          results.push(...r);
          metrics.events.inc({ type: eventTypeLabel(event.type ?? ""), outcome: r.some((x) => x.transient === true) ? "transient" : "handled" });
          if (r.some((x) => x.transient === true)) status = Math.max(status, 503);
        } catch (err) {
          if (!(err instanceof BadEvent)) throw err;
          metrics.events.inc({ type: eventTypeLabel(event.type ?? ""), outcome: "malformed" });
          elog.warn({ detail: err.message }, "refused: event cannot be processed");
          status = Math.max(status, 400);
          results.push({ pod: event.subject ?? "", outcome: "failed", reason: err.message });
        }
      }
      if (status < 400) {
        if (!wantsRepresentation(req.headers.prefer)) {
          res.status(status).end();
          return;
        }
        res.setHeader("preference-applied", "return=representation");
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

  /** A pod event in either ApiServerSource mode, to the pod it names. */
  async function handlePodEvent(event: IncomingEvent, policy: Policy, elog: Logger, receivedAt: number): Promise<HandledPod> {
    const match = POD_EVENT.exec(event.type ?? "");
    if (match === null) throw new BadEvent(`unsupported event type ${event.type ?? "(none)"}`);
    const [, mode, verb] = match;
    let pod: Pod | undefined;
    if (mode === "ref") {
      const ref = event.data as { kind?: unknown; namespace?: unknown; name?: unknown } | undefined;
      if (ref?.kind !== "Pod" || typeof ref.namespace !== "string" || typeof ref.name !== "string")
        throw new BadEvent("reference event without a Pod reference");
      if (verb === "delete") return reconciler.gone(`${ref.namespace}/${ref.name}`, elog);
      try {
        pod = await deps.cluster.getPod(ref.namespace, ref.name);
      } catch (err) {
        elog.warn({ err: errorMessage(err) }, "cannot read the referenced pod");
        return { pod: `${ref.namespace}/${ref.name}`, outcome: "failed", reason: "api-unavailable", transient: true };
      }
      if (pod === undefined) return reconciler.gone(`${ref.namespace}/${ref.name}`, elog);
    } else {
      try {
        pod = parsePod(typeof event.data === "string" ? JSON.parse(event.data) : event.data);
      } catch (err) {
        throw new BadEvent(err instanceof PodManifestError ? err.message : "event data is not a Pod");
      }
    }
    // Resource mode carries the pod as the sender saw it: a trigger, not the truth.
    return reconciler.reconcilePod(pod, policy, elog, { deleted: verb === "delete", fromApi: mode === "ref", receivedAt });
  }

  return app;
}
