// The node-runner's HTTP API (docs/architecture.md §6–§7): verify the signature, the authority,
// freshness and the nonce, parse the body, then hand the pod to program.ts. Every refusal has
// its status and a log line, and changes nothing.
import { STATUS_TEXT } from "../contract/refusals.ts";
import { randomUUID, type KeyObject } from "node:crypto";
import express, { type Request, type Response } from "express";
import type { Logger } from "pino";
import {
  APPLY_PATH,
  MAX_BODY_BYTES,
  REFUSE_PATH,
  applyRequestSchema,
  refuseRequestSchema,
  SKIP_PATH,
  skipRequestSchema,
  type ApplyResponse,
  type ErrorResponse,
} from "../contract/apply-request.ts";
import { ConcurrencyLimit } from "../lib/concurrency.ts";
import { deferredChild } from "../lib/deferred-logger.ts";
import { errorMessage, formatSchemaIssues } from "../lib/errors.ts";
import { acceptedUntilMs, verifyDigest, verifySignature, type SignedMessage, type VerifyResult } from "../contract/signature.ts";
import type { NodeRunnerMetrics } from "./metrics.ts";

/** The signed routes: what a request asks of the pod. */
type Route = "apply" | "refuse" | "skip";
import { createPodProgrammer, Refusal, type PodProgrammer, type ProgramDeps } from "./program.ts";
import type { ReplayCache } from "./replay.ts";

/** Connections open at once (the function keeps DISPATCH_PER_NODE per replica; a flood of 600 is served); more are closed as they arrive. */
export const MAX_CONNECTIONS = 1024;
/** A request's headers must arrive within this. */
export const HEADERS_TIMEOUT_MS = 5000;
/** A whole request (headers and at most MAX_BODY_BYTES of body) must arrive within this. */
export const REQUEST_TIMEOUT_MS = 10_000;

export interface NodeRunnerDeps extends ProgramDeps {
  /**
   * The `host:port` forms this node-runner is reached at (its node's IP and port): the signed
   * `@authority` must be one of them.
   */
  readonly authorities: ReadonlySet<string>;
  /** When this process started (ms): without a restored nonce journal, requests signed before it are refused. */
  readonly startedAtMs: number;
  readonly keys: { readonly current: ReadonlyMap<string, KeyObject> };
  readonly replay: ReplayCache;
  readonly log: Logger;
  readonly metrics: NodeRunnerMetrics;
  readonly now?: () => number;
  /** Pods programmed at once; more requests wait for a slot. */
  readonly maxConcurrent?: number;
  /** True once the process is stopping: new requests are refused (`stopping`), every answer closes its connection. */
  readonly stopping?: () => boolean;
}

/** Bounded parallelism across pods, strict serialisation per pod. */
class WorkQueue {
  private readonly slots: ConcurrencyLimit;
  private readonly busyPods = new Set<string>();
  constructor(limit: number) {
    this.slots = new ConcurrencyLimit(limit);
  }

  async run<T>(podUid: string, work: () => Promise<T>): Promise<T> {
    if (this.busyPods.has(podUid)) throw new Refusal("in-progress", "work for this pod is in progress");
    this.busyPods.add(podUid);
    try {
      return await this.slots.run(work);
    } finally {
      this.busyPods.delete(podUid);
    }
  }
}

const ROUTES = new Map<string, Route>([
  [APPLY_PATH, "apply"],
  [REFUSE_PATH, "refuse"],
  [SKIP_PATH, "skip"],
]);
const REQUEST_SCHEMAS = { apply: applyRequestSchema, refuse: refuseRequestSchema, skip: skipRequestSchema } as const;

/** `programmer`: the pods' pipeline (main.ts keeps it, to send the waiting Events on shutdown). */
export function createNodeRunnerApp(deps: NodeRunnerDeps, programmer: PodProgrammer = createPodProgrammer(deps)): express.Express {
  const now = deps.now ?? Date.now;
  const startedAtMs = deps.startedAtMs;
  // Without the nonces of an earlier process (no journal survived), a request signed before
  // this process started cannot be told from a replay. `created` is in whole seconds.
  const acceptsSignedAt = (createdSeconds: number): boolean => deps.replay.restored || createdSeconds * 1000 > startedAtMs;
  const queue = new WorkQueue(deps.maxConcurrent ?? 8);
  const app = express();
  app.disable("x-powered-by");
  app.disable("etag"); // no client revalidates an answer: no hash of every body
  app.set("trust proxy", false);

  app.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  const stopping = deps.stopping ?? (() => false);

  app.get("/readyz", (_req, res) => {
    // Ready once it can verify requests: at least one public key loaded, and requests signed
    // now are accepted (without a restored nonce journal, the second it started is refused).
    const accepting = acceptsSignedAt(Math.floor(now() / 1000)) && !stopping();
    const ready = deps.keys.current.size > 0 && accepting;
    res.status(ready ? 200 : 503).json({ status: ready ? "ready" : "not ready", keys: deps.keys.current.size, accepting });
  });

  const raw = express.raw({ type: () => true, limit: MAX_BODY_BYTES });
  for (const [routePath, route] of ROUTES) {
    app.post(
      routePath,
      (req, res, next) => {
        signedFirst(req, res, next, route);
      },
      raw,
      (req, res) => handle(req, res, route),
    );
  }

  // Errors from the body parser (oversize, bad encoding) and anything unexpected.
  // Express recognises an error handler by its four parameters.
  app.use((err: unknown, req: Request, res: Response, _next: express.NextFunction) => {
    const e = err as { type?: string; status?: number; message?: string };
    const route = ROUTES.get(req.path) ?? "other";
    if (e.type === "entity.too.large" && route !== "other") {
      refuse(res, deps.log.child({ route }), route, tooLarge());
      return;
    }
    refuse(res, deps.log.child({ route }), route, new Refusal("unreadable", e.message ?? "the body could not be read"));
  });

  /**
   * Who signed, for this address, and fresh — from the headers alone: the signature covers the
   * Content-Digest header, so nobody without a signing key makes this process buffer a body.
   */
  function signedFirst(req: Request, res: Response, next: express.NextFunction, route: Route): void {
    const log = deferredChild(deps.log, { requestId: requestIdOf(req), route });
    try {
      if (stopping()) throw new Refusal("stopping", "this node-runner is stopping: send again to the one that follows it");
      // A body declared larger than any request is refused unread, signed or not.
      if (Number(req.headers["content-length"] ?? 0) > MAX_BODY_BYTES) throw tooLarge();
      // 1–2: signature (by keyid) and freshness.
      const verified = verifySignature(signedMessage(req), deps.keys.current, now());
      if (!verified.ok) {
        deps.metrics.signatureFailures.inc({ reason: verified.reason });
        throw new Refusal(verified.reason, verified.detail);
      }
      // The signed authority must name this node-runner: a request signed for another
      // address (a forged hostIP sent the function elsewhere) is not for it.
      const authority = (req.headers.host ?? "").toLowerCase();
      if (!deps.authorities.has(authority)) {
        throw new Refusal("wrong-authority", `signed for ${JSON.stringify(authority)}, this node-runner answers as ${[...deps.authorities].join(", ")}`);
      }
      // 3: signed before this process started and not judgeable for replay: re-sign (503).
      if (!acceptsSignedAt(verified.created)) {
        deps.metrics.signatureFailures.inc({ reason: "signed-before-start" });
        throw new Refusal(
          "signed-before-start",
          `signed at ${verified.created}, before this node-runner started (${Math.floor(startedAtMs / 1000)}): re-sign and retry`,
        );
      }
      res.locals.verified = verified;
      next();
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      // Answered now; the body the client may still be sending is discarded as it arrives,
      // never buffered (closing at once would reset the connection before the client reads
      // the answer), within the request timeout.
      refuse(res, log, route, err);
    }
  }

  function refuse(res: Response, log: Logger, route: Route | "other", err: Refusal): void {
    deps.metrics.requests.inc({ route, result: err.reason });
    log.warn({ status: err.status, reason: err.reason, detail: err.message }, `refused: ${err.reason}`);
    if (err.retryAfterSeconds !== undefined) res.set("Retry-After", String(err.retryAfterSeconds));
    answer(res, err.status, { error: STATUS_TEXT[err.status], reason: err.reason, detail: err.message } satisfies ErrorResponse);
  }

  /**
   * Every answer of a route. Once stopping, it ends its connection, those of requests taken
   * before too: a client that keeps its connection busy would otherwise keep the server from
   * closing until the grace period ends the process with its Events still waiting.
   */
  function answer(res: Response, status: number, body: ApplyResponse | ErrorResponse): void {
    if (stopping()) res.set("Connection", "close");
    res.status(status).json(body);
  }

  async function handle(req: Request, res: Response, route: Route): Promise<void> {
    const started = performance.now();
    let log = deferredChild(deps.log, { requestId: requestIdOf(req), route });
    try {
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const verified = res.locals.verified as Extract<VerifyResult, { ok: true }>;
      // The body is the one signed for.
      const digest = verifyDigest(signedMessage(req), body);
      if (digest !== undefined) {
        deps.metrics.signatureFailures.inc({ reason: digest.reason });
        throw new Refusal(digest.reason, digest.detail);
      }
      // 4: replay.
      let seen: ReturnType<ReplayCache["remember"]>;
      try {
        seen = deps.replay.remember(`${verified.keyid}/${verified.nonce}`, acceptedUntilMs(verified.expires), now());
      } catch (err) {
        throw new Refusal("replay-cache-unavailable", `the nonce journal cannot be written: ${errorMessage(err)}`);
      }
      if (seen === "replay") {
        deps.metrics.signatureFailures.inc({ reason: "replay" });
        throw new Refusal("replay", "this nonce was already used");
      }
      if (seen === "full") throw new Refusal("replay-cache-full", "too many requests in the signature window");

      let json: unknown;
      try {
        json = JSON.parse(body.toString("utf8"));
      } catch {
        throw new Refusal("malformed", "body is not JSON");
      }
      const parsed = REQUEST_SCHEMAS[route].safeParse(json);
      if (!parsed.success) {
        throw new Refusal("malformed", formatSchemaIssues(parsed.error, "(body)"));
      }
      const request = parsed.data;
      const pod = request.pod;
      log = deferredChild(log, { pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid }, keyid: verified.keyid });

      // 5: the request is for this node.
      if (request.node !== deps.nodeName) throw new Refusal("wrong-node", `request for node ${request.node}, this is ${deps.nodeName}`);

      // 6 onwards: the pod, its netns, the rules, the mark (program.ts).
      const outcome = await queue.run(pod.uid, () =>
        request.kind === "ApplyRequest"
          ? programmer.apply(pod, request.capture, log)
          : request.kind === "RefuseRequest"
            ? programmer.refuse(pod, request.refusal, log)
            : programmer.skip(pod, request.skip, log),
      );
      const durationMs = Math.round((performance.now() - started) * 10) / 10;
      // The pod's init container waits on this answer's mark; the line and the count can follow it.
      answer(res, 200, { ...outcome, durationMs } satisfies ApplyResponse);
      deps.metrics.requests.inc({ route, result: outcome.result });
      log.info({ ...outcome, durationMs, decision: request.decision }, `${route}: ${outcome.result}`);
    } catch (err) {
      if (err instanceof Refusal) {
        refuse(res, log, route, err);
        return;
      }
      deps.metrics.requests.inc({ route, result: "error" });
      log.error({ err }, `${route} failed`);
      answer(res, 500, { error: STATUS_TEXT[500], reason: "error", detail: errorMessage(err) } satisfies ErrorResponse);
    }
  }

  return app;
}

/** The request as RFC 9421 covers it. */
function signedMessage(req: Request): SignedMessage {
  return { method: req.method, authority: req.headers.host ?? "", path: req.originalUrl, headers: req.headers };
}

function tooLarge(): Refusal {
  return new Refusal("too-large", `at most ${MAX_BODY_BYTES} bytes`);
}

function requestIdOf(req: Request): string {
  const given = req.headers["x-request-id"];
  // A caller's id is logged, so it is bounded.
  return typeof given === "string" && given.length <= 128 ? given : randomUUID();
}
