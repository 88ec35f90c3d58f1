// Who holds a bearer token, as the API server says: a TokenReview (is the token valid, for which
// user), a SubjectAccessReview (may that user do something), and the verdict cache both callers
// of them need. The function authenticates event senders with them (functions/sender-auth.ts);
// both components authorize metrics scrapes with them (lib/metrics-server.ts), as the kubelet
// and kube-rbac-proxy do. Reviews go over connections of their own (`use: "reviews"`), so that a
// flood of tokens waits there and never holds up pod reads.
import { createHash } from "node:crypto";
import { BoundedMap } from "./bounded-map.ts";
import { apiRequest, type ApiConnection } from "./kube-http.ts";

export interface ReviewedUser {
  readonly username: string;
  readonly uid?: string;
  readonly groups?: readonly string[];
  readonly extra?: Readonly<Record<string, readonly string[]>>;
}

export interface TokenReviewAnswer {
  readonly authenticated: boolean;
  /** Set when authenticated. */
  readonly user?: ReviewedUser;
  readonly error?: string;
}

/** Asks the API server about a token (for `audience`, or the API server's own audiences); the seam unit tests replace. */
export type TokenReviewer = (token: string, audience?: string) => Promise<TokenReviewAnswer>;

interface TokenReviewStatus {
  readonly authenticated?: boolean;
  readonly audiences?: string[];
  readonly user?: { readonly username?: string; readonly uid?: string; readonly groups?: string[]; readonly extra?: Record<string, string[]> };
  readonly error?: string;
}

/** Create a review object (TokenReview, SubjectAccessReview) and return its status, on the reviews' own connections. */
async function review<S>(
  conn: ApiConnection,
  group: string,
  kind: "TokenReview" | "SubjectAccessReview",
  spec: object,
  deadlineMs: number,
): Promise<S | undefined> {
  const answer = (await apiRequest(
    conn,
    "POST",
    `/apis/${group}/v1/${kind.toLowerCase()}s`,
    { contentType: "application/json", value: { apiVersion: `${group}/v1`, kind, spec } },
    { deadlineMs, use: "reviews" },
  )) as { status?: S } | undefined;
  return answer?.status;
}

export function tokenReviewer(conn: ApiConnection, deadlineMs = 5000): TokenReviewer {
  return async (token, audience) => {
    const spec = audience === undefined ? { token } : { token, audiences: [audience] };
    const status = await review<TokenReviewStatus>(conn, "authentication.k8s.io", "TokenReview", spec, deadlineMs);
    const forAudience = audience === undefined || (status?.audiences ?? [audience]).includes(audience);
    const user = status?.user;
    return {
      authenticated: status?.authenticated === true && forAudience && user?.username !== undefined,
      ...(user?.username === undefined
        ? {}
        : {
            user: {
              username: user.username,
              ...(user.uid === undefined ? {} : { uid: user.uid }),
              ...(user.groups === undefined ? {} : { groups: user.groups }),
              ...(user.extra === undefined ? {} : { extra: user.extra }),
            },
          }),
      ...(status?.error === undefined ? {} : { error: status.error }),
    };
  };
}

/** Whether a user may `verb` a non-resource path (SubjectAccessReview); the seam unit tests replace. */
export type AccessReviewer = (user: ReviewedUser, verb: string, path: string) => Promise<{ allowed: boolean; reason?: string }>;

export function accessReviewer(conn: ApiConnection, deadlineMs = 5000): AccessReviewer {
  return async (user, verb, path) => {
    const spec = {
      user: user.username,
      ...(user.uid === undefined ? {} : { uid: user.uid }),
      groups: user.groups ?? [],
      ...(user.extra === undefined ? {} : { extra: user.extra }),
      nonResourceAttributes: { verb, path },
    };
    const status = await review<{ allowed?: boolean; reason?: string }>(conn, "authorization.k8s.io", "SubjectAccessReview", spec, deadlineMs);
    return { allowed: status?.allowed === true, ...(status?.reason === undefined ? {} : { reason: status.reason }) };
  };
}

/** The token of an `Authorization: Bearer <token>` header; undefined when there is none. */
export function bearerToken(authorization: string | undefined): string | undefined {
  return /^Bearer ([A-Za-z0-9._~+/=-]{1,16384})$/.exec(authorization ?? "")?.[1];
}

/** A verdict the cache can tell apart: accepted ones and refused ones are kept apart. */
export interface CachedVerdict {
  readonly ok: boolean;
}

const CACHE_MS = 60_000;

/**
 * Verdicts on tokens, by sha256 of the token, reused for a minute (or until the token expires):
 * a caller presents the same token for its lifetime, so one review per token and minute. Accepted
 * and refused verdicts live in stores of their own, so junk tokens never evict a good one; one
 * review per token at a time (concurrent requests with a new token share it); at most
 * `maxPending` reviews waiting at once, beyond which `busy` answers without one. Verdicts whose
 * review failed (the API server unreachable) are not kept.
 */
export class TokenVerdicts<V extends CachedVerdict> {
  private readonly accepted: BoundedMap<string, { verdict: V; until: number }>;
  private readonly refused: BoundedMap<string, { verdict: V; until: number }>;
  private readonly pending = new Map<string, Promise<V>>();

  constructor(
    private readonly options: {
      readonly maxPending: number;
      readonly entries?: number;
      readonly now?: () => number;
    },
  ) {
    this.accepted = new BoundedMap(options.entries ?? 1000);
    this.refused = new BoundedMap(options.entries ?? 1000);
  }

  /** Reviews asked and not yet answered. */
  get pendingReviews(): number {
    return this.pending.size;
  }

  now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** The cached verdict on `token`, if one is still valid. */
  cached(token: string): V | undefined {
    const key = tokenKey(token);
    const hit = this.accepted.get(key) ?? this.refused.get(key);
    return hit !== undefined && hit.until > this.now() ? hit.verdict : undefined;
  }

  /**
   * The verdict on `token`: cached, shared with a review in flight, or from `review` (kept
   * unless `keep` says no, at most until `expiresMs`); `busy` when too many reviews wait.
   */
  async verdict(token: string, review: () => Promise<{ verdict: V; keep: boolean }>, busy: () => V, expiresMs = Infinity): Promise<V> {
    const cached = this.cached(token);
    if (cached !== undefined) return cached;
    const key = tokenKey(token);
    const inFlight = this.pending.get(key);
    if (inFlight !== undefined) return inFlight;
    if (this.pending.size >= this.options.maxPending) return busy();
    const started = this.now();
    const answer = review()
      .then(({ verdict, keep }) => {
        if (keep) (verdict.ok ? this.accepted : this.refused).set(key, { verdict, until: Math.min(started + CACHE_MS, expiresMs) });
        return verdict;
      })
      .finally(() => {
        this.pending.delete(key);
      });
    this.pending.set(key, answer);
    return answer;
  }
}

function tokenKey(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}
