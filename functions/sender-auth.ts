// Who may send events to the function: Knative Eventing's OIDC sender identity (the
// `authentication-oidc` feature). A source sends `Authorization: Bearer <JWT>`, a Kubernetes
// ServiceAccount token for the sink's audience; the function asks the API server whether the
// token is valid for that audience (TokenReview) and accepts only the configured senders'
// ServiceAccounts. An event is a trigger, never the truth (the pod is read from the API server
// before anything is signed), but without this anyone who reaches the function could make it
// work for them (and, with PingSource events, sweep the cluster).
import { createHash } from "node:crypto";
import { BoundedMap } from "../lib/bounded-map.ts";
import { errorMessage } from "../lib/errors.ts";
import { apiRequest, type ApiConnection } from "../lib/kube-http.ts";

export type SenderVerdict =
  | { readonly ok: true; readonly sender: string }
  | { readonly ok: false; readonly reason: "missing-token" | "invalid-token" | "sender-not-allowed" | "auth-unavailable"; readonly detail: string };

/** Asks the API server about a token; the seam unit tests replace. */
export type TokenReviewer = (token: string, audience: string) => Promise<{ authenticated: boolean; username?: string; error?: string }>;

interface TokenReviewStatus {
  readonly authenticated?: boolean;
  readonly audiences?: string[];
  readonly user?: { readonly username?: string };
  readonly error?: string;
}

export function tokenReviewer(conn: ApiConnection, deadlineMs = 5000): TokenReviewer {
  return async (token, audience) => {
    const body = { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, audiences: [audience] } };
    // On connections of their own: reviews that queue (a flood of tokens) never hold up pod reads.
    const review = (await apiRequest(conn, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", { contentType: "application/json", value: body }, { deadlineMs, use: "reviews" })) as
      | { status?: TokenReviewStatus }
      | undefined;
    const status = review?.status;
    return { authenticated: status?.authenticated === true && (status.audiences ?? [audience]).includes(audience), ...(status?.user?.username === undefined ? {} : { username: status.user.username }), ...(status?.error === undefined ? {} : { error: status.error }) };
  };
}

/** A ServiceAccount's user name as TokenReview reports it. */
export function serviceAccountUser(namespace: string, name: string): string {
  return `system:serviceaccount:${namespace}:${name}`;
}

/**
 * The ServiceAccount Knative Eventing creates for a source's OIDC identity
 * (`<name>-oidc-<group>-<kind>`, lower case), e.g. for ApiServerSource podnet-pods.
 */
export function knativeSourceIdentity(namespace: string, name: string, kind: "ApiServerSource" | "PingSource"): string {
  return serviceAccountUser(namespace, `${name}-oidc-sources.knative.dev-${kind}`.toLowerCase());
}

const CACHE_MS = 60_000;
/** Verdicts on tokens that passed: the allowed senders' tokens, a handful per rotation. */
const ACCEPTED_ENTRIES = 1000;
/** Verdicts on tokens the API server refused: their own, smaller store, so junk never evicts a sender. */
const REFUSED_ENTRIES = 1000;
/** TokenReviews waiting or in flight at once; more tokens are answered 503 without one. */
export const MAX_PENDING_REVIEWS = 32;

/** The claims of a JWT read without verifying it: only to refuse, never to accept. */
interface UnverifiedClaims {
  readonly sub?: unknown;
  readonly aud?: unknown;
  readonly exp?: unknown;
}

export class SenderAuthenticator {
  // sha256(token) → verdict and until when it may be reused: sources reuse a token for its
  // lifetime, so one TokenReview per token and minute keeps the hot path in microseconds.
  private readonly accepted = new BoundedMap<string, { verdict: SenderVerdict; until: number }>(ACCEPTED_ENTRIES);
  private readonly refused = new BoundedMap<string, { verdict: SenderVerdict; until: number }>(REFUSED_ENTRIES);
  /** One review per token at a time: concurrent events with the same new token share it. */
  private readonly pending = new Map<string, Promise<SenderVerdict>>();

  constructor(
    private readonly options: {
      readonly audience: string;
      readonly allowed: ReadonlySet<string>;
      readonly review: TokenReviewer;
      readonly now?: () => number;
    },
  ) {}

  /** TokenReviews asked and not yet answered. */
  get reviewsPending(): number {
    return this.pending.size;
  }

  async authenticate(authorization: string | undefined): Promise<SenderVerdict> {
    const match = /^Bearer ([A-Za-z0-9._~+/=-]{1,16384})$/.exec(authorization ?? "");
    if (match?.[1] === undefined) {
      return { ok: false, reason: "missing-token", detail: "the event carries no Bearer token (is Knative's authentication-oidc feature on?)" };
    }
    const token = match[1];
    const now = (this.options.now ?? Date.now)();
    const key = createHash("sha256").update(token).digest("hex");
    const cached = this.accepted.get(key) ?? this.refused.get(key);
    if (cached !== undefined && cached.until > now) return cached.verdict;

    // What the token claims decides refusals without the API server: a token that does not even
    // claim to be an allowed sender's, for this audience, unexpired, costs no TokenReview.
    const claims = unverifiedClaims(token);
    if (claims === undefined) return { ok: false, reason: "invalid-token", detail: "not a JWT" };
    const audiences = typeof claims.aud === "string" ? [claims.aud] : Array.isArray(claims.aud) ? claims.aud : [];
    if (!audiences.includes(this.options.audience)) return { ok: false, reason: "invalid-token", detail: `not a token for audience ${this.options.audience}` };
    if (typeof claims.exp !== "number" || claims.exp * 1000 <= now) return { ok: false, reason: "invalid-token", detail: "the token has expired or has no expiry" };
    if (typeof claims.sub !== "string" || !this.options.allowed.has(claims.sub)) {
      return { ok: false, reason: "sender-not-allowed", detail: `${typeof claims.sub === "string" ? claims.sub.slice(0, 200) : "a token without a subject"} is not an allowed sender` };
    }

    const inFlight = this.pending.get(key);
    if (inFlight !== undefined) return inFlight;
    if (this.pending.size >= MAX_PENDING_REVIEWS) {
      return { ok: false, reason: "auth-unavailable", detail: `${MAX_PENDING_REVIEWS} token reviews are already waiting for the API server` };
    }
    const review = this.review(token, key, claims.exp * 1000, now).finally(() => {
      this.pending.delete(key);
    });
    this.pending.set(key, review);
    return review;
  }

  private async review(token: string, key: string, expiresMs: number, now: number): Promise<SenderVerdict> {
    let review: Awaited<ReturnType<TokenReviewer>>;
    try {
      review = await this.options.review(token, this.options.audience);
    } catch (err) {
      // Not cached: the next event asks again.
      return { ok: false, reason: "auth-unavailable", detail: errorMessage(err) };
    }
    let verdict: SenderVerdict;
    if (!review.authenticated || review.username === undefined) {
      verdict = { ok: false, reason: "invalid-token", detail: `not a valid token for audience ${this.options.audience}${review.error === undefined ? "" : `: ${review.error.slice(0, 200)}`}` };
    } else if (!this.options.allowed.has(review.username)) {
      verdict = { ok: false, reason: "sender-not-allowed", detail: `${review.username} is not an allowed sender` };
    } else {
      verdict = { ok: true, sender: review.username };
    }
    (verdict.ok ? this.accepted : this.refused).set(key, { verdict, until: Math.min(now + CACHE_MS, expiresMs) });
    return verdict;
  }
}

/** The payload of a JWT, unverified; undefined when the token is not a JWT. */
function unverifiedClaims(token: string): UnverifiedClaims | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const payload: unknown = JSON.parse(Buffer.from(parts[1] ?? "", "base64url").toString("utf8"));
    return typeof payload === "object" && payload !== null ? (payload) : undefined;
  } catch {
    return undefined;
  }
}
