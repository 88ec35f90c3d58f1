// Every way the node-runner refuses a request: a closed set of reasons, each with its HTTP status,
// its Retry-After (the function retries a 503, never anything else) and when it happens, in the
// order a request is checked. The node-runner answers from this table, the function reads the
// reason back from it, and docs/reference.md's status table is generated from it
// (scripts/generate-docs.ts).
import type { VerifyFailureReason } from "./signature.ts";

interface RefusalRow {
  readonly status: 400 | 401 | 409 | 413 | 421 | 422 | 503;
  readonly reasons: readonly string[];
  /** Seconds in Retry-After (503 only). */
  readonly retryAfterSeconds?: number;
  /** When it happens, for the reference. */
  readonly when: string;
}

const SIGNATURE_REASONS = [
  "missing-signature",
  "malformed-signature",
  "profile-mismatch",
  "unknown-key",
  "bad-signature",
  "expired",
  "not-yet-valid",
] as const satisfies readonly Exclude<VerifyFailureReason, "digest-mismatch">[];

export const REFUSAL_ROWS = [
  {
    status: 503,
    reasons: ["stopping"],
    retryAfterSeconds: 1,
    when: "the node-runner is stopping (a rolling update, a restart): requests already taken are finished; a new one is refused unread and its connection closed, for the function to send again to the runner that follows",
  },
  { status: 413, reasons: ["too-large"], when: "a `Content-Length` over 64 KiB (refused unread), or a body that grows past it" },
  { status: 401, reasons: SIGNATURE_REASONS, when: "RFC 9421 checks, from the headers alone: the body is not read (what the client still sends is discarded)" },
  { status: 421, reasons: ["wrong-authority"], when: "the signed `@authority` is not this node-runner's address (`--host-ip`:port); also before the body" },
  {
    status: 503,
    reasons: ["signed-before-start"],
    retryAfterSeconds: 1,
    when: "signed before this process started while no nonce journal of an earlier process was found (first start, or the tmpfs was cleared by a reboot): it cannot be told from a replay. Re-sign and retry; `/readyz` stays 503 for that first second",
  },
  { status: 400, reasons: ["unreadable"], when: "the body could not be read as sent (aborted, or in an encoding the node-runner does not take)" },
  { status: 401, reasons: ["digest-mismatch"], when: "the body read is not the one signed for (RFC 9530 `Content-Digest`)" },
  {
    status: 401,
    reasons: ["replay"],
    when: "the nonce was seen while its signature can still pass the freshness check (kept exactly that long, and journaled in the state directory across restarts)",
  },
  { status: 503, reasons: ["replay-cache-full"], retryAfterSeconds: 1, when: "too many live nonces" },
  { status: 503, reasons: ["replay-cache-unavailable"], retryAfterSeconds: 5, when: "the nonce journal cannot be written" },
  {
    status: 400,
    reasons: ["malformed"],
    when: "not JSON, or not an `ApplyRequest` / `RefuseRequest` / `SkipRequest` (parsed only after the signature verified)",
  },
  { status: 421, reasons: ["wrong-node"], when: "`node` is not this node" },
  {
    status: 409,
    reasons: ["pod-not-found", "uid-mismatch", "not-on-this-node", "terminating"],
    when: "the pod as the API server sees it: for a namespace that holds rules, a refusal or a skip, through a patch that changes nothing, before anything changes; for a new pod's namespace (no rules in it), through the mark's own patch, after which the rules just applied are taken out again (`terminating` is not checked there). `not-on-this-node` is the admission policy's refusal; `uid-mismatch` the mark's UID precondition (also when the pod is deleted or replaced while its rules are applied)",
  },
  { status: 409, reasons: ["host-netns"], when: "the pod's processes are only in the node's own network namespace (a hostNetwork pod)" },
  { status: 409, reasons: ["ambiguous-netns"], when: "more than one network namespace in the pod's kubelet cgroup holds the pod's IP: never choose" },
  {
    status: 422,
    reasons: ["invalid-capture"],
    when: "the capture config fails validation, or names an owner group the node-runner's `/etc/group` does not define (checked before anything is applied; use a GID); also a `NetworkInitFailed` Event on the pod",
  },
  {
    status: 409,
    reasons: ["initialized-with-other-rules"],
    when: "the pod is marked `initialized` in this network namespace with other rules than these (e.g. two function replicas deciding under a policy before and after a change): the rules a pod started with stay for its sandbox's life, and a re-created sandbox (a new namespace) takes the policy's rules then; nothing changed. Checked only where the namespace holds rules",
  },
  {
    status: 409,
    reasons: ["rules-refused"],
    when: "the tool ran to its end and refused the transaction (e.g. someone else's rule refers to an `ISTIO_*` chain these rules do not keep); nothing changed; a `NetworkInitFailed` Event",
  },
  {
    status: 503,
    reasons: ["in-progress", "netns-not-found"],
    retryAfterSeconds: 1,
    when: "work for the pod is under way; the sandbox is not there yet, went away, or lost its last process while the rules were applied (then the pod is not marked)",
  },
  { status: 503, reasons: ["api-unavailable"], retryAfterSeconds: 2, when: "the API server did not answer within its deadline" },
  {
    status: 503,
    reasons: ["node-unavailable"],
    retryAfterSeconds: 2,
    when: "the node cannot run the apply now: the command helper died, a tool is missing, a command ran out of time (told by how the command ended, never by its output)",
  },
  {
    status: 503,
    reasons: ["host-netns-unknown", "state-unwritable"],
    retryAfterSeconds: 10,
    when: "the node's own netns cannot be determined (the runner must run with `hostNetwork` and `hostPID`; nothing is programmed until it can); the state directory cannot be written (full or read-only)",
  },
] as const satisfies readonly RefusalRow[];

export type RefusalReason = (typeof REFUSAL_ROWS)[number]["reasons"][number];

export interface RefusalSpec {
  readonly status: RefusalRow["status"];
  readonly retryAfterSeconds?: number;
}

/** reason → status and Retry-After. */
export const REFUSAL: Readonly<Record<RefusalReason, RefusalSpec>> = Object.fromEntries(
  REFUSAL_ROWS.flatMap((row: RefusalRow) =>
    row.reasons.map((reason) => [reason, { status: row.status, ...(row.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: row.retryAfterSeconds }) }]),
  ),
) as Record<RefusalReason, RefusalSpec>;

/** The `error` text of an answer with this status. */
export const STATUS_TEXT: Readonly<Record<RefusalRow["status"] | 500, string>> = {
  400: "bad request",
  401: "unauthorized",
  409: "conflict",
  413: "payload too large",
  421: "misdirected request",
  422: "invalid capture configuration",
  500: "internal error",
  503: "unavailable",
};

/** Whether the function may send the same request again later: only the node's passing states. */
export function isRetryableRefusal(status: number): boolean {
  return status === 503 || status >= 500;
}

/** The reference's status table (docs/reference.md), rows in the order a request is checked. */
export function refusalTableMarkdown(): string {
  const rows = REFUSAL_ROWS.map(
    (row: RefusalRow) =>
      `| ${row.status}${row.retryAfterSeconds === undefined ? "" : ` + \`Retry-After: ${row.retryAfterSeconds}\``} | ${row.reasons.map((r) => `\`${r}\``).join(", ")} | ${row.when} |`,
  );
  return [
    "| status | `reason` | when |",
    "|---|---|---|",
    ...rows,
    "| 200 | `applied`, `unchanged`, `removed`, `absent` | with `netns` (inode), `rules` (digest), `durationMs` |",
  ].join("\n");
}
