// A component's Prometheus metrics on a port of their own, apart from its API (the node-runner's
// signed API, the function's events): GET /metrics and nothing else. With `authorize`, a scrape
// must carry a bearer token the API server accepts, for a user allowed to `get` the
// non-resource URL /metrics — the kubelet's and kube-rbac-proxy's rule, which the ClusterRole
// Prometheus is usually given already grants. Bounded whoever calls: connections, header time,
// and the page itself, rendered once for all the scrapes waiting for it.
import http from "node:http";
import https from "node:https";
import type { Registry } from "prom-client";
import { errorMessage } from "./errors.ts";
import { accessReviewer, bearerToken, tokenReviewer, TokenVerdicts, type AccessReviewer, type TokenReviewer } from "./token-review.ts";
import type { ApiConnection } from "./kube-http.ts";

export const METRICS_PATH = "/metrics";
const MAX_CONNECTIONS = 256;
/** Reviews waiting at once; more scrapes with unknown tokens are answered 503 without one. */
const MAX_PENDING_REVIEWS = 8;

export type ScrapeVerdict = { readonly ok: true; readonly user: string } | { readonly ok: false; readonly status: 401 | 403 | 503; readonly reason: string };

/** Who may scrape: a token the API server knows, of a user allowed `get` on /metrics. */
export class ScrapeAuthorizer {
  private readonly verdicts: TokenVerdicts<ScrapeVerdict>;
  constructor(
    private readonly reviews: { readonly token: TokenReviewer; readonly access: AccessReviewer },
    now?: () => number,
  ) {
    this.verdicts = new TokenVerdicts({ maxPending: MAX_PENDING_REVIEWS, entries: 256, ...(now === undefined ? {} : { now }) });
  }

  static forApiServer(conn: ApiConnection): ScrapeAuthorizer {
    return new ScrapeAuthorizer({ token: tokenReviewer(conn), access: accessReviewer(conn) });
  }

  authorize(authorization: string | undefined): Promise<ScrapeVerdict> {
    const token = bearerToken(authorization);
    if (token === undefined) return Promise.resolve({ ok: false, status: 401, reason: "a bearer token is required" });
    return this.verdicts.verdict(
      token,
      async () => {
        try {
          const review = await this.reviews.token(token);
          if (!review.authenticated || review.user === undefined) return { verdict: { ok: false, status: 401, reason: "the token is not valid" }, keep: true };
          const access = await this.reviews.access(review.user, "get", METRICS_PATH);
          const verdict: ScrapeVerdict = access.allowed
            ? { ok: true, user: review.user.username }
            : { ok: false, status: 403, reason: `${review.user.username.slice(0, 200)} may not get ${METRICS_PATH}` };
          return { verdict, keep: true };
        } catch (err) {
          return { verdict: { ok: false, status: 503, reason: `cannot review the token now: ${errorMessage(err).slice(0, 200)}` }, keep: false };
        }
      },
      () => ({ ok: false, status: 503, reason: `${MAX_PENDING_REVIEWS} token reviews are already waiting for the API server` }),
    );
  }
}

export interface MetricsServerOptions {
  readonly registry: Registry;
  /** Undefined: anyone who reaches the port may scrape. */
  readonly authorizer?: ScrapeAuthorizer;
  /** Serve HTTPS with this certificate. */
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer };
  /** A refused scrape, by status (for a metric and a log line). */
  readonly onRefused?: (status: number, reason: string) => void;
}

export function createMetricsServer(options: MetricsServerOptions): http.Server {
  // One rendering at a time: scrapes that arrive meanwhile share it.
  let rendering: Promise<string> | undefined;
  const render = (): Promise<string> =>
    (rendering ??= options.registry.metrics().finally(() => {
      rendering = undefined;
    }));
  const answer = (res: http.ServerResponse, status: number, text: string, type = "text/plain; charset=utf-8"): void => {
    res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(text) });
    res.end(text);
  };
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    req.resume(); // a body, if any, is not read
    const path = (req.url ?? "").split("?")[0];
    if (path !== METRICS_PATH) {
      answer(res, 404, "not found: only GET /metrics is served here\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      answer(res, 405, "only GET\n");
      return;
    }
    void (async () => {
      if (options.authorizer !== undefined) {
        const verdict = await options.authorizer.authorize(req.headers.authorization);
        if (!verdict.ok) {
          options.onRefused?.(verdict.status, verdict.reason);
          if (verdict.status === 401) res.setHeader("www-authenticate", 'Bearer realm="metrics"');
          answer(res, verdict.status, `${verdict.reason}\n`);
          return;
        }
      }
      answer(res, 200, await render(), options.registry.contentType);
    })().catch((err: unknown) => {
      answer(res, 500, `${errorMessage(err)}\n`);
    });
  };
  const limits = { headersTimeout: 5000, requestTimeout: 10_000, connectionsCheckingInterval: 1000 };
  const server =
    options.tls === undefined ? http.createServer(limits, handler) : https.createServer({ ...limits, cert: options.tls.cert, key: options.tls.key }, handler);
  server.maxConnections = MAX_CONNECTIONS;
  server.maxHeadersCount = 32;
  return server;
}
