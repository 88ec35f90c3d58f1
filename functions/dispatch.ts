// Signed apply requests to the node-runner on the pod's node (docs/architecture.md §6): keep-alive
// connections, a timeout, a concurrency bound, retries with backoff on connection errors and
// 503, and coalescing: while a request for a pod is in flight, newer decisions for that pod
// wait and only the latest is sent next.
import { isRetryableRefusal, REFUSAL } from "../contract/refusals.ts";
import { randomUUID, type KeyObject } from "node:crypto";
import http from "node:http";
import https from "node:https";
import { API_VERSION, APPLY_PATH, CONTENT_TYPE, applyResponseSchema, errorResponseSchema, type ApplyRequest } from "../contract/apply-request.ts";
import { signRequest } from "../contract/signature.ts";
import type { Decision } from "./decision.ts";
import { ConcurrencyLimit } from "../lib/concurrency.ts";
import { errorMessage } from "../lib/errors.ts";

export type ApplyDecision = Extract<Decision, { action: "apply" }>;

export type DispatchResult =
  | { readonly ok: true; readonly status: 200; readonly result: string; readonly attempts: number }
  | {
      readonly ok: false;
      readonly status: number;
      readonly reason: string;
      readonly retryable: boolean;
      readonly attempts: number;
      readonly retryAfterMs?: number;
    };

/** The longest Retry-After the dispatcher honours before a retry (the resync catches the rest). */
const MAX_RETRY_AFTER_MS = 5000;

export interface DispatcherOptions {
  /** The current signing key (the newest, when several are mounted). */
  readonly signingKey: () => { keyid: string; privateKey: KeyObject };
  readonly port: number;
  readonly scheme?: "http" | "https";
  /** CA for HTTPS node-runners. */
  readonly ca?: Buffer;
  /** The name node-runners' certificates carry (checked instead of the node's IP). */
  readonly serverName?: string;
  readonly timeoutMs?: number;
  readonly maxConcurrent?: number;
  /**
   * Requests in flight to one node-runner at most (it programs 8 pods at once by default): more
   * would only wait there, holding its memory, and one slow node would take every slot.
   */
  readonly maxPerNode?: number;
  readonly attempts?: number;
  readonly backoffMs?: number;
  /** Override where a node's runner is reached (tests: everything on loopback). */
  readonly addressFor?: (decision: ApplyDecision) => string;
  /** Pods queued at most (in flight or waiting); `offer` refuses more. */
  readonly maxQueuedPods?: number;
  /** Seconds a decision waited in the queue before it was sent (a metric). */
  readonly onQueueAge?: (seconds: number) => void;
}

/** Per pod: the newest decision not yet sent, and who waits for its result. */
interface PodQueue {
  pending: { decision: ApplyDecision; policyId: string; queuedAt: number } | undefined;
  waiters: ((result: DispatchResult) => void)[];
}

export class Dispatcher {
  private readonly agent: http.Agent;
  private readonly pods = new Map<string, PodQueue>();
  private readonly slots: ConcurrencyLimit;
  private readonly nodeSlots = new Map<string, ConcurrencyLimit>();

  constructor(private readonly options: DispatcherOptions) {
    this.slots = new ConcurrencyLimit(options.maxConcurrent ?? 32);
    const agentOptions = { keepAlive: true, maxSockets: this.slots.limit };
    this.agent =
      options.scheme === "https" ? new https.Agent({ ...agentOptions, ...(options.ca === undefined ? {} : { ca: options.ca }) }) : new http.Agent(agentOptions);
  }

  /** Dispatch; while a request for the same pod is under way, only the newest decision is sent next. */
  dispatch(decision: ApplyDecision, policyId: string): Promise<DispatchResult> {
    const uid = decision.pod.uid;
    let q = this.pods.get(uid);
    const idle = q === undefined;
    if (q === undefined) {
      q = { pending: undefined, waiters: [] };
      this.pods.set(uid, q);
    }
    q.pending = { decision, policyId, queuedAt: performance.now() };
    const result = new Promise<DispatchResult>((resolve) => q.waiters.push(resolve));
    if (idle) void this.drain(uid, q);
    return result;
  }

  /**
   * Queue a decision without waiting for it: the caller answers its event at once (the event
   * source delivers one event at a time and waits). `onResult` gets the outcome, retries
   * included. "full" when the queue holds `maxQueuedPods` other pods: nothing was queued.
   */
  offer(decision: ApplyDecision, policyId: string, onResult: (result: DispatchResult) => void): "queued" | "coalesced" | "full" {
    const known = this.pods.has(decision.pod.uid);
    if (!known && this.pods.size >= (this.options.maxQueuedPods ?? 10_000)) return "full";
    void this.dispatch(decision, policyId).then(onResult);
    return known ? "coalesced" : "queued";
  }

  /** Pods queued or in flight. */
  get busy(): number {
    return this.pods.size;
  }

  /** Resolves once nothing is queued or in flight (drain on SIGTERM). */
  async whenIdle(pollMs = 20): Promise<void> {
    while (this.pods.size > 0) await new Promise((r) => setTimeout(r, pollMs));
  }

  private async drain(uid: string, q: PodQueue): Promise<void> {
    while (q.pending !== undefined) {
      const { decision, policyId, queuedAt } = q.pending;
      const waiters = q.waiters;
      q.pending = undefined;
      q.waiters = [];
      let node = this.nodeSlots.get(decision.node);
      if (node === undefined) {
        node = new ConcurrencyLimit(this.options.maxPerNode ?? 8);
        this.nodeSlots.set(decision.node, node);
      }
      // The node's slot first: a pod waiting for a busy node holds none of the shared ones.
      const result = await node
        .run(() =>
          this.slots.run(() => {
            this.options.onQueueAge?.((performance.now() - queuedAt) / 1000);
            return this.send(decision, policyId);
          }),
        )
        .catch((err: unknown): DispatchResult => ({ ok: false, status: 0, reason: errorMessage(err), retryable: true, attempts: 0 }));
      if (node.idle) this.nodeSlots.delete(decision.node);
      for (const resolve of waiters) resolve(result);
    }
    this.pods.delete(uid);
  }

  private async send(decision: ApplyDecision, policyId: string): Promise<DispatchResult> {
    const body: ApplyRequest = {
      apiVersion: API_VERSION,
      kind: "ApplyRequest",
      node: decision.node,
      pod: decision.pod,
      capture: decision.capture,
      decision: { reason: decision.reason, policy: policyId },
    };
    const payload = Buffer.from(JSON.stringify(body));
    const attempts = this.options.attempts ?? 3;
    let last: DispatchResult = { ok: false, status: 0, reason: "not-sent", retryable: true, attempts: 0 };
    for (let attempt = 1; attempt <= attempts; attempt++) {
      last = await this.once(decision, payload, attempt);
      if (last.ok || !last.retryable || attempt === attempts) return last;
      // The node-runner's Retry-After (capped) when it gives one, else exponential backoff.
      const backoff = (this.options.backoffMs ?? 100) * 2 ** (attempt - 1);
      const retryAfterMs = "retryAfterMs" in last ? (last.retryAfterMs ?? 0) : 0;
      await new Promise((r) => setTimeout(r, Math.max(backoff, Math.min(retryAfterMs, MAX_RETRY_AFTER_MS))));
    }
    return last;
  }

  private once(decision: ApplyDecision, payload: Buffer, attempt: number): Promise<DispatchResult> {
    const host = this.options.addressFor?.(decision) ?? decision.hostIP;
    const authority = `${host.includes(":") ? `[${host}]` : host}:${this.options.port}`;
    const headers = signRequest({ method: "POST", authority, path: APPLY_PATH, contentType: CONTENT_TYPE, body: payload }, this.options.signingKey(), {
      now: Date.now(),
      nonce: randomUUID(),
    });
    const client = this.options.scheme === "https" ? https : http;
    return new Promise((resolve) => {
      const req = client.request(
        {
          host,
          port: this.options.port,
          path: APPLY_PATH,
          method: "POST",
          agent: this.agent,
          timeout: this.options.timeoutMs ?? 5000,
          headers: { ...headers, host: authority, "content-type": CONTENT_TYPE, "content-length": payload.length },
          ...(this.options.serverName === undefined ? {} : { servername: this.options.serverName }),
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => (text += c));
          res.on("end", () => {
            const status = res.statusCode ?? 0;
            let body: unknown;
            try {
              body = JSON.parse(text);
            } catch {
              body = undefined; // not JSON: the status alone says what happened
            }
            if (status === 200) {
              const answer = applyResponseSchema.safeParse(body);
              // A 200 that is not the contract's answer is not proof that anything was applied.
              if (answer.success) resolve({ ok: true, status: 200, result: answer.data.result, attempts: attempt });
              else resolve({ ok: false, status, reason: "bad-response", retryable: false, attempts: attempt });
            } else {
              const refusal = errorResponseSchema.safeParse(body);
              const retryAfter = Number(res.headers["retry-after"]);
              resolve({
                ok: false,
                status,
                // A reason from the table only: it becomes a metric label.
                reason: refusal.success && Object.hasOwn(REFUSAL, refusal.data.reason) ? refusal.data.reason : `http-${status}`,
                retryable: isRetryableRefusal(status),
                attempts: attempt,
                ...(Number.isFinite(retryAfter) && retryAfter > 0 ? { retryAfterMs: retryAfter * 1000 } : {}),
              });
            }
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (err: NodeJS.ErrnoException) => {
        resolve({ ok: false, status: 0, reason: err.code ?? err.message, retryable: true, attempts: attempt });
      });
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
