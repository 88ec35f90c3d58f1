// Who may send events to the function: Knative Eventing's OIDC sender identity (the
// `authentication-oidc` feature). A source sends `Authorization: Bearer <JWT>`, a Kubernetes
// ServiceAccount token for the sink's audience; the function asks the API server whether the
// token is valid for that audience (TokenReview) and accepts only the configured senders'
// ServiceAccounts. An event is a trigger, never the truth (the pod is read from the API server
// before anything is signed), but without this anyone who reaches the function could make it
// work for them (and, with PingSource events, sweep the cluster).
import { errorMessage } from "../lib/errors.ts";
import { bearerToken, TokenVerdicts, type TokenReviewer } from "../lib/token-review.ts";

export type SenderVerdict =
  | { readonly ok: true; readonly sender: string }
  | { readonly ok: false; readonly reason: "missing-token" | "invalid-token" | "sender-not-allowed" | "auth-unavailable"; readonly detail: string };

/** A ServiceAccount's user name as TokenReview reports it. */
export function serviceAccountUser(namespace: string, name: string): string {
  return `system:serviceaccount:${namespace}:${name}`;
}

/** The API group of each Knative kind that sends events with an OIDC identity of its own. */
const SENDER_GROUPS = { ApiServerSource: "sources.knative.dev", PingSource: "sources.knative.dev", Trigger: "eventing.knative.dev" } as const;

/**
 * The ServiceAccount Knative Eventing creates for a sender's OIDC identity
 * (`<name>-oidc-<group>-<kind>`, lower case): a source's, or a Trigger's, with which the
 * Broker's filter delivers to the Trigger's subscriber.
 */
export function knativeSenderIdentity(namespace: string, name: string, kind: keyof typeof SENDER_GROUPS): string {
  return serviceAccountUser(namespace, `${name}-oidc-${SENDER_GROUPS[kind]}-${kind}`.toLowerCase());
}

/** TokenReviews waiting or in flight at once; more tokens are answered 503 without one. */
export const MAX_PENDING_REVIEWS = 32;

/** The claims of a JWT read without verifying it: only to refuse, never to accept. */
interface UnverifiedClaims {
  readonly sub?: unknown;
  readonly aud?: unknown;
  readonly exp?: unknown;
}

export class SenderAuthenticator {
  // Sources reuse a token for its lifetime: one TokenReview per token and minute keeps the hot
  // path in microseconds.
  private readonly verdicts: TokenVerdicts<SenderVerdict>;

  constructor(
    private readonly options: {
      readonly audience: string;
      readonly allowed: ReadonlySet<string>;
      readonly review: TokenReviewer;
      readonly now?: () => number;
    },
  ) {
    this.verdicts = new TokenVerdicts({ maxPending: MAX_PENDING_REVIEWS, ...(options.now === undefined ? {} : { now: options.now }) });
  }

  /** TokenReviews asked and not yet answered. */
  get reviewsPending(): number {
    return this.verdicts.pendingReviews;
  }

  async authenticate(authorization: string | undefined): Promise<SenderVerdict> {
    const token = bearerToken(authorization);
    if (token === undefined) {
      return {
        ok: false,
        reason: "missing-token",
        detail:
          "the event carries no Bearer token: Knative Eventing sends one only with its authentication-oidc feature on (ConfigMap config-features in knative-eventing) and to a sink with an audience (the source's sink.audience, a Trigger's subscriber.audience)",
      };
    }
    const cached = this.verdicts.cached(token);
    if (cached !== undefined) return cached;

    // What the token claims decides refusals without the API server: a token that does not even
    // claim to be an allowed sender's, for this audience, unexpired, costs no TokenReview.
    const now = this.verdicts.now();
    const claims = unverifiedClaims(token);
    if (claims === undefined) return { ok: false, reason: "invalid-token", detail: "not a JWT" };
    const audiences = typeof claims.aud === "string" ? [claims.aud] : Array.isArray(claims.aud) ? claims.aud : [];
    if (!audiences.includes(this.options.audience)) return { ok: false, reason: "invalid-token", detail: `not a token for audience ${this.options.audience}` };
    if (typeof claims.exp !== "number" || claims.exp * 1000 <= now)
      return { ok: false, reason: "invalid-token", detail: "the token has expired or has no expiry" };
    if (typeof claims.sub !== "string" || !this.options.allowed.has(claims.sub)) {
      return {
        ok: false,
        reason: "sender-not-allowed",
        detail: `${typeof claims.sub === "string" ? claims.sub.slice(0, 200) : "a token without a subject"} is not an allowed sender`,
      };
    }
    return this.verdicts.verdict(
      token,
      () => this.review(token),
      () => ({ ok: false, reason: "auth-unavailable", detail: `${MAX_PENDING_REVIEWS} token reviews are already waiting for the API server` }),
      claims.exp * 1000,
    );
  }

  private async review(token: string): Promise<{ verdict: SenderVerdict; keep: boolean }> {
    let review: Awaited<ReturnType<TokenReviewer>>;
    try {
      review = await this.options.review(token, this.options.audience);
    } catch (err) {
      // Not kept: the next event asks again.
      return { verdict: { ok: false, reason: "auth-unavailable", detail: errorMessage(err) }, keep: false };
    }
    const username = review.user?.username;
    if (!review.authenticated || username === undefined) {
      return {
        verdict: {
          ok: false,
          reason: "invalid-token",
          detail: `not a valid token for audience ${this.options.audience}${review.error === undefined ? "" : `: ${review.error.slice(0, 200)}`}`,
        },
        keep: true,
      };
    }
    if (!this.options.allowed.has(username))
      return { verdict: { ok: false, reason: "sender-not-allowed", detail: `${username} is not an allowed sender` }, keep: true };
    return { verdict: { ok: true, sender: username }, keep: true };
  }
}

/** The payload of a JWT, unverified; undefined when the token is not a JWT. */
function unverifiedClaims(token: string): UnverifiedClaims | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const payload: unknown = JSON.parse(Buffer.from(parts[1] ?? "", "base64url").toString("utf8"));
    return typeof payload === "object" && payload !== null ? payload : undefined;
  } catch {
    return undefined;
  }
}
