// The node-runner's HTTP API (docs/architecture.md §6–§7): verify, check the pod, find its netns, apply,
// mark. Every refusal has its status and a log line, and changes nothing.
import { randomUUID, type KeyObject } from "node:crypto";
import express, { type Request, type Response } from "express";
import type { Logger } from "pino";
import {
  APPLY_PATH,
  MAX_BODY_BYTES,
  REMOVE_PATH,
  applyRequestSchema,
  removeRequestSchema,
  type ApplyResponse,
  type ErrorResponse,
  type PodRef,
} from "../contract/apply-request.ts";
import { CaptureConfigError, parseCaptureConfig, type CaptureConfig } from "../contract/capture-config.ts";
import { acceptedUntilMs, verifyRequest } from "../contract/signature.ts";
import { apiFailureKind, type PodApi } from "./kube.ts";
import type { NodeRunnerMetrics } from "./metrics.ts";
import { ApplyError, type NetnsTarget } from "./apply.ts";
import type { NetnsApplier } from "./backends.ts";
import { NetnsGoneError, openNetns, type NetnsResolution, type OpenNetns, type ResolvedNetns } from "./netns.ts";
import type { ReplayCache } from "./replay.ts";
import { ConcurrencyLimit } from "../contract/concurrency.ts";
import { errorMessage, formatSchemaIssues } from "../contract/errors.ts";


export interface NodeRunnerDeps {
  readonly nodeName: string;
  /**
   * The `host:port` forms this node-runner is reached at (its node's IP and port): the signed
   * `@authority` must be one of them.
   */
  readonly authorities: ReadonlySet<string>;
  /** When this process started (ms): without a restored nonce journal, requests signed before it are refused. */
  readonly startedAtMs: number;
  readonly keys: { readonly current: ReadonlyMap<string, KeyObject> };
  readonly replay: ReplayCache;
  readonly pods: PodApi;
  readonly resolveNetns: (pod: { uid: string; ips: readonly string[] }) => Promise<NetnsResolution>;
  /** The applier for a namespace (the iptables backend may be detected per namespace). */
  readonly applierFor: (netns: NetnsTarget) => Promise<NetnsApplier>;
  /** Opens the resolved namespace for one apply (default: openNetns). */
  readonly openNetns?: (netns: ResolvedNetns) => OpenNetns;
  readonly log: Logger;
  readonly metrics: NodeRunnerMetrics;
  readonly now?: () => number;
  /** Pods programmed at once; more requests wait for a slot. */
  readonly maxConcurrent?: number;
}

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** Bounded parallelism across pods, strict serialisation per pod. */
class WorkQueue {
  private readonly slots: ConcurrencyLimit;
  private readonly busyPods = new Set<string>();
  constructor(limit: number) {
    this.slots = new ConcurrencyLimit(limit);
  }

  async run<T>(podUid: string, work: () => Promise<T>): Promise<T> {
    if (this.busyPods.has(podUid)) throw new Refusal(503, "in-progress", "work for this pod is in progress", 1);
    this.busyPods.add(podUid);
    try {
      return await this.slots.run(work);
    } finally {
      this.busyPods.delete(podUid);
    }
  }
}

export function createNodeRunnerApp(deps: NodeRunnerDeps): express.Express {
  const now = deps.now ?? Date.now;
  const startedAtMs = deps.startedAtMs;
  // Without the nonces of an earlier process (no journal survived), a request signed before
  // this process started cannot be told from a replay. `created` is in whole seconds.
  const acceptsSignedAt = (createdSeconds: number): boolean => deps.replay.restored || createdSeconds * 1000 > startedAtMs;
  const queue = new WorkQueue(deps.maxConcurrent ?? 8);
  const app = express();
  app.disable("x-powered-by");
  app.set("trust proxy", false);

  app.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  app.get("/readyz", (_req, res) => {
    // Ready once it can verify requests: at least one public key loaded, and requests signed
    // now are accepted (without a restored nonce journal, the second it started is refused).
    const accepting = acceptsSignedAt(Math.floor(now() / 1000));
    const ready = deps.keys.current.size > 0 && accepting;
    res.status(ready ? 200 : 503).json({ status: ready ? "ready" : "not ready", keys: deps.keys.current.size, accepting });
  });
  app.get("/metrics", async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });

  const raw = express.raw({ type: () => true, limit: MAX_BODY_BYTES });
  app.post(APPLY_PATH, raw, (req, res) => handle(req, res, "apply"));
  app.post(REMOVE_PATH, raw, (req, res) => handle(req, res, "remove"));

  // Errors from the body parser (oversize, bad encoding) and anything unexpected.
  // Express recognises an error handler by its four parameters.
  app.use((err: unknown, req: Request, res: Response, _next: express.NextFunction) => {
    const e = err as { type?: string; status?: number; message?: string };
    const route = req.path === APPLY_PATH ? "apply" : req.path === REMOVE_PATH ? "remove" : "other";
    if (e.type === "entity.too.large") {
      deps.metrics.requests.inc({ route, result: "too-large" });
      deps.log.warn({ route, status: 413, reason: "too-large", limit: MAX_BODY_BYTES }, "refused: too-large");
      res.status(413).json({ error: "payload too large", reason: "too-large", detail: `at most ${MAX_BODY_BYTES} bytes` } satisfies ErrorResponse);
      return;
    }
    deps.metrics.requests.inc({ route, result: "bad-request" });
    deps.log.warn({ route, status: 400, reason: "unreadable", detail: e.message }, "refused: unreadable");
    res.status(e.status !== undefined && e.status >= 400 && e.status < 500 ? e.status : 400).json({ error: "bad request", reason: "unreadable", detail: e.message ?? "" } satisfies ErrorResponse);
  });

  async function handle(req: Request, res: Response, route: "apply" | "remove"): Promise<void> {
    const started = performance.now();
    const requestId = (typeof req.headers["x-request-id"] === "string" ? req.headers["x-request-id"] : undefined) ?? randomUUID();
    let log = deps.log.child({ requestId, route });
    try {
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      // 1–3: digest, signature, freshness.
      const verified = verifyRequest(
        { method: req.method, authority: req.headers.host ?? "", path: req.originalUrl, headers: req.headers },
        body,
        deps.keys.current,
        now(),
      );
      if (!verified.ok) {
        deps.metrics.signatureFailures.inc({ reason: verified.reason });
        throw new Refusal(401, verified.reason, verified.detail);
      }
      // The signed authority must name this node-runner: a request signed for another
      // address (a forged hostIP sent the function elsewhere) is not for it.
      const authority = (req.headers.host ?? "").toLowerCase();
      if (!deps.authorities.has(authority)) {
        throw new Refusal(421, "wrong-authority", `signed for ${JSON.stringify(authority)}, this node-runner answers as ${[...deps.authorities].join(", ")}`);
      }
      // 4: replay (503 when signed before this process started and not judgeable: re-sign).
      if (!acceptsSignedAt(verified.created)) {
        deps.metrics.signatureFailures.inc({ reason: "signed-before-start" });
        throw new Refusal(503, "signed-before-start", `signed at ${verified.created}, before this node-runner started (${Math.floor(startedAtMs / 1000)}): re-sign and retry`, 1);
      }
      let seen: ReturnType<ReplayCache["remember"]>;
      try {
        seen = deps.replay.remember(`${verified.keyid}/${verified.nonce}`, acceptedUntilMs(verified.expires), now());
      } catch (err) {
        throw new Refusal(503, "replay-cache-unavailable", `the nonce journal cannot be written: ${errorMessage(err)}`, 5);
      }
      if (seen === "replay") {
        deps.metrics.signatureFailures.inc({ reason: "replay" });
        throw new Refusal(401, "replay", "this nonce was already used");
      }
      if (seen === "full") throw new Refusal(503, "replay-cache-full", "too many requests in the signature window", 1);

      let json: unknown;
      try {
        json = JSON.parse(body.toString("utf8"));
      } catch {
        throw new Refusal(400, "malformed", "body is not JSON");
      }
      const parsed = (route === "apply" ? applyRequestSchema : removeRequestSchema).safeParse(json);
      if (!parsed.success) {
        throw new Refusal(400, "malformed", formatSchemaIssues(parsed.error, "(body)"));
      }
      const request = parsed.data;
      const pod = request.pod;
      log = log.child({ pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid }, keyid: verified.keyid });

      // 5: the request is for this node.
      if (request.node !== deps.nodeName) throw new Refusal(421, "wrong-node", `request for node ${request.node}, this is ${deps.nodeName}`);

      const outcome = await queue.run(pod.uid, async () => {
        // 6: the pod exists with that UID, is bound here, and has its own network namespace.
        await checkPodIdentity(pod, route);
        if (route === "remove") return remove(pod);
        let capture: CaptureConfig;
        try {
          capture = parseCaptureConfig("capture" in request ? request.capture : undefined);
        } catch (err) {
          if (!(err instanceof CaptureConfigError)) throw err;
          recordEvent(pod, "Warning", "NetworkInitFailed", `invalid capture configuration: ${err.message}`, log);
          throw new Refusal(422, "invalid-capture", err.message);
        }
        return apply(pod, capture);
      });
      const durationMs = Math.round((performance.now() - started) * 10) / 10;
      deps.metrics.requests.inc({ route, result: outcome.result });
      log.info({ ...outcome, durationMs, decision: request.decision }, `${route}: ${outcome.result}`);
      res.status(200).json({ ...outcome, durationMs } satisfies ApplyResponse);
    } catch (err) {
      if (err instanceof Refusal) {
        deps.metrics.requests.inc({ route, result: err.reason });
        log.warn({ status: err.status, reason: err.reason, detail: err.message }, `refused: ${err.reason}`);
        if (err.retryAfterSeconds !== undefined) res.set("Retry-After", String(err.retryAfterSeconds));
        res.status(err.status).json({ error: statusText(err.status), reason: err.reason, detail: err.message } satisfies ErrorResponse);
        return;
      }
      deps.metrics.requests.inc({ route, result: "error" });
      log.error({ err }, `${route} failed`);
      res.status(500).json({ error: "internal error", reason: "error", detail: errorMessage(err) } satisfies ErrorResponse);
    }

    async function checkPodIdentity(pod: PodRef, r: "apply" | "remove"): Promise<void> {
      const facts = await deps.pods.getPod(pod.namespace, pod.name).catch((err: unknown): never => {
        throw new Refusal(503, "api-unavailable", `cannot read the pod: ${errorMessage(err)}`, 2);
      });
      if (facts === undefined) throw new Refusal(409, "pod-not-found", `pod ${pod.namespace}/${pod.name} does not exist`);
      if (facts.uid !== pod.uid) throw new Refusal(409, "uid-mismatch", `pod ${pod.namespace}/${pod.name} has UID ${facts.uid}, not ${pod.uid}`);
      if (facts.nodeName !== deps.nodeName) throw new Refusal(409, "not-on-this-node", `pod is bound to ${facts.nodeName ?? "no node"}, not ${deps.nodeName}`);
      if (facts.hostNetwork) throw new Refusal(409, "host-network", "the pod uses the node's network namespace: it is never programmed");
      if (r === "apply" && facts.terminating) throw new Refusal(409, "terminating", "the pod is being deleted");
    }

    /** Resolve the pod's netns and open it once: the work runs against that descriptor. */
    async function withNetns<T>(pod: PodRef, work: (netns: OpenNetns) => Promise<T>): Promise<T> {
      const t0 = performance.now();
      const resolution = await deps.resolveNetns({ uid: pod.uid, ips: pod.ips });
      deps.metrics.netnsDuration.observe({ outcome: resolution.found ? "found" : resolution.reason }, (performance.now() - t0) / 1000);
      if (!resolution.found) {
        if (resolution.reason === "host-netns-only") throw new Refusal(409, "host-netns", resolution.detail);
        if (resolution.reason === "ambiguous-netns") throw new Refusal(409, "ambiguous-netns", resolution.detail);
        if (resolution.reason === "host-netns-unknown") throw new Refusal(503, "host-netns-unknown", resolution.detail, 10);
        throw new Refusal(503, "netns-not-found", resolution.detail, 2);
      }
      let netns: OpenNetns;
      try {
        netns = (deps.openNetns ?? openNetns)(resolution.netns);
      } catch (err) {
        if (err instanceof NetnsGoneError) throw new Refusal(503, "netns-not-found", err.message, 1);
        throw err;
      }
      try {
        return await work(netns);
      } finally {
        netns.close();
      }
    }

    function apply(pod: PodRef, capture: CaptureConfig) {
      return withNetns(pod, (netns) => applyIn(pod, capture, netns));
    }

    async function applyIn(pod: PodRef, capture: CaptureConfig, netns: OpenNetns) {
      const t0 = performance.now();
      let result: Awaited<ReturnType<NetnsApplier["apply"]>>;
      try {
        result = await (await deps.applierFor(netns)).apply(netns, pod.uid, capture);
      } catch (err) {
        recordEvent(pod, "Warning", "NetworkInitFailed", `applying the rules failed: ${errorMessage(err)}`, log);
        if (err instanceof ApplyError) throw refusalFor(err);
        throw err;
      }
      deps.metrics.applyDuration.observe({ result: result.result }, (performance.now() - t0) / 1000);
      try {
        await deps.pods.markInitialized(pod, { netns: netns.inode, rules: result.digest });
      } catch (err) {
        const message = errorMessage(err);
        const kind = apiFailureKind(err);
        // The UID precondition of the patch: the pod is gone or is another pod now.
        if (kind === "not-found") throw new Refusal(409, "pod-not-found", `the pod was deleted while its rules were applied: ${message}`);
        if (kind === "conflict") throw new Refusal(409, "uid-mismatch", `the pod changed identity while its rules were applied: ${message}`);
        // The rules are in place; a retry finds them unchanged and marks the pod then.
        throw new Refusal(503, "api-unavailable", `rules applied but the pod could not be marked: ${message}`, 2);
      }
      if (result.result === "applied") {
        recordEvent(pod, "Normal", "NetworkInitialized", `traffic capture programmed in network namespace ${netns.inode} (rules ${result.digest})`, log);
      }
      return { result: result.result, netns: netns.inode, rules: result.digest };
    }

    function remove(pod: PodRef) {
      return withNetns(pod, async (netns) => {
        const result = await (await deps.applierFor(netns)).remove(netns, pod.uid);
        await deps.pods.clearMark(pod);
        return { result };
      });
    }
  }

  /** Events follow the answer: recorded in the background, a failure only logged and counted. */
  function recordEvent(pod: PodRef, type: "Normal" | "Warning", reason: string, message: string, log: Logger): void {
    deps.pods.recordEvent(pod, { type, reason, message }).catch((err: unknown) => {
      deps.metrics.eventFailures.inc({ reason });
      log.warn({ err: errorMessage(err), reason }, "could not record a Kubernetes Event");
    });
  }

  return app;
}

/** A command the kernel or a tool refused, as a documented answer (never a 500). */
function refusalFor(err: ApplyError): Refusal {
  if (err.kind === "owner-group") return new Refusal(422, "invalid-capture", `an owner group cannot be resolved on this node: ${err.message}`);
  if (err.kind === "netns-gone") return new Refusal(503, "netns-not-found", err.message, 1);
  return new Refusal(409, "rules-refused", err.message);
}

function statusText(status: number): string {
  return (
    { 400: "bad request", 401: "unauthorized", 409: "pod identity mismatch", 413: "payload too large", 421: "misdirected request", 422: "invalid capture configuration", 503: "unavailable" }[status] ?? "error"
  );
}
