// Who may send events to the function: Knative Eventing's OIDC sender identity (the
// `authentication-oidc` feature). A source sends `Authorization: Bearer <JWT>`, a Kubernetes
// ServiceAccount token for the sink's audience; the function asks the API server whether the
// token is valid for that audience (TokenReview) and accepts only the configured senders'
// ServiceAccounts. An event is a trigger, never the truth (the pod is read from the API server
// before anything is signed), but without this anyone who reaches the function could make it
// work for them (and, with PingSource events, sweep the cluster).
import { createHash } from "node:crypto";
import { withDeadline } from "../contract/deadline.ts";
import { errorMessage } from "../contract/errors.ts";
import { apiRequest, type ApiConnection } from "../contract/kube-http.ts";

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
    const review = (await withDeadline(apiRequest(conn, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", { contentType: "application/json", value: body }), deadlineMs, "TokenReview")) as
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
const CACHE_ENTRIES = 10_000;

export class SenderAuthenticator {
  // sha256(token) → verdict and until when it may be reused: sources reuse a token for its
  // lifetime, so one TokenReview per token and minute keeps the hot path in microseconds.
  private readonly cache = new Map<string, { verdict: SenderVerdict; until: number }>();

  constructor(
    private readonly options: {
      readonly audience: string;
      readonly allowed: ReadonlySet<string>;
      readonly review: TokenReviewer;
      readonly now?: () => number;
    },
  ) {}

  async authenticate(authorization: string | undefined): Promise<SenderVerdict> {
    const match = /^Bearer ([A-Za-z0-9._~+/=-]{1,16384})$/.exec(authorization ?? "");
    if (match?.[1] === undefined) {
      return { ok: false, reason: "missing-token", detail: "the event carries no Bearer token (is Knative's authentication-oidc feature on?)" };
    }
    const token = match[1];
    const now = (this.options.now ?? Date.now)();
    const key = createHash("sha256").update(token).digest("hex");
    const cached = this.cache.get(key);
    if (cached !== undefined && cached.until > now) return cached.verdict;

    let review: Awaited<ReturnType<TokenReviewer>>;
    try {
      review = await this.options.review(token, this.options.audience);
    } catch (err) {
      // Not cached: the next event asks again.
      return { ok: false, reason: "auth-unavailable", detail: errorMessage(err) };
    }
    let verdict: SenderVerdict;
    if (!review.authenticated || review.username === undefined) {
      verdict = { ok: false, reason: "invalid-token", detail: `not a valid token for audience ${this.options.audience}${review.error === undefined ? "" : `: ${review.error}`}` };
    } else if (!this.options.allowed.has(review.username)) {
      verdict = { ok: false, reason: "sender-not-allowed", detail: `${review.username} is not an allowed sender` };
    } else {
      verdict = { ok: true, sender: review.username };
    }
    if (this.cache.size >= CACHE_ENTRIES) this.cache.delete(this.cache.keys().next().value ?? "");
    this.cache.set(key, { verdict, until: Math.min(now + CACHE_MS, jwtExpiry(token) ?? Infinity) });
    return verdict;
  }
}

/** The `exp` claim (ms) of a JWT, unverified: only bounds how long a verdict is reused. */
function jwtExpiry(token: string): number | undefined {
  try {
    const payload: unknown = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
    const exp = (payload as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
