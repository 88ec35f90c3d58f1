// Signed apply (and refusal) requests to the node-runner on the pod's node (docs/architecture.md §6): one
// attempt each, over keep-alive connections, with a timeout and concurrency bounds (overall and
// per node). Retries, coalescing and backoff are the work queue's (work-queue.ts).
import { isRetryableRefusal, REFUSAL } from "../contract/refusals.ts";
import { randomUUID, type KeyObject } from "node:crypto";
import http from "node:http";
import https from "node:https";
import {
  API_VERSION,
  APPLY_PATH,
  CONTENT_TYPE,
  REFUSE_PATH,
  SKIP_PATH,
  applyResponseSchema,
  errorResponseSchema,
  type ApplyRequest,
  type RefuseRequest,
  type SkipRequest,
} from "../contract/apply-request.ts";
import { signRequest } from "../contract/signature.ts";
import type { Decision, ReleaseDecision } from "./decision.ts";
import { ConcurrencyLimit } from "../lib/concurrency.ts";
import { errorMessage } from "../lib/errors.ts";
import { formatHostPort } from "../lib/listen-address.ts";

export type ApplyDecision = Extract<Decision, { action: "apply" }>;
export type RefuseDecision = Extract<Decision, { action: "refuse" }>;
/** What is sent to a node-runner: rules to apply, or a refusal or a skip to mark. */
export type DispatchDecision = ApplyDecision | RefuseDecision | ReleaseDecision;

export type DispatchResult =
  | { readonly ok: true; readonly status: 200; readonly result: string }
  | {
      readonly ok: false;
      readonly status: number;
      readonly reason: string;
      /** The node may take it later (no answer, 503): worth a retry. */
      readonly retryable: boolean;
      /** The node-runner's Retry-After. */
      readonly retryAfterMs?: number;
    };

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
  /** Override where a node's runner is reached (tests: everything on loopback). */
  readonly addressFor?: (decision: DispatchDecision) => string;
  /** A connection to a node-runner idle this long is closed (default IDLE_CONNECTION_MS). */
  readonly idleConnectionMs?: number;
}

/**
 * Connections are kept alive only this long between requests. There is one per node-runner the
 * function talks to, and each TLS connection holds about 150 KiB of OpenSSL's buffers outside the
 * heap: kept until the node-runner closes them (5 s), a busy 1,000-node cluster held 300 of them
 * (bench:scale); after a second idle, 36–51, and after a quarter of a second 4–7 MiB less of the
 * function's memory than that, for no CPU the benchmark can see. A burst to one node still reuses
 * its connection (its requests follow each other within milliseconds); a later one resumes its
 * TLS session.
 */
export const IDLE_CONNECTION_MS = 250;
/** TLS sessions kept for resumption (one per node-runner): a new connection to a node resumes instead of a full handshake. */
const TLS_SESSIONS = 5000;

export class Dispatcher {
  private agent: http.Agent;
  /** Agents replaced by trust(), closed once their requests are over. */
  private readonly retired = new Set<http.Agent>();
  private readonly slots: ConcurrencyLimit;
  private readonly nodeSlots = new Map<string, ConcurrencyLimit>();

  constructor(private readonly options: DispatcherOptions) {
    this.slots = new ConcurrencyLimit(options.maxConcurrent ?? 32);
    this.agent = this.newAgent(options.ca);
  }

  /**
   * Send one signed apply request. The node's slot is taken first: a pod waiting for a busy node
   * holds none of the shared ones. `onSending`: when the slots are had and the request goes.
   */
  async send(decision: DispatchDecision, policyId: string, onSending?: () => void): Promise<DispatchResult> {
    let node = this.nodeSlots.get(decision.node);
    if (node === undefined) {
      node = new ConcurrencyLimit(this.options.maxPerNode ?? 8);
      this.nodeSlots.set(decision.node, node);
    }
    try {
      return await node.run(() =>
        this.slots.run(() => {
          onSending?.();
          return this.once(decision, this.payload(decision, policyId));
        }),
      );
    } catch (err) {
      return { ok: false, status: 0, reason: errorMessage(err), retryable: true };
    } finally {
      if (node.idle) this.nodeSlots.delete(decision.node);
    }
  }

  private payload(decision: DispatchDecision, policyId: string): Buffer {
    const common = { apiVersion: API_VERSION, node: decision.node, pod: decision.pod, decision: { reason: decision.reason, policy: policyId } } as const;
    const body: ApplyRequest | RefuseRequest | SkipRequest =
      decision.action === "apply"
        ? { ...common, kind: "ApplyRequest", capture: decision.capture }
        : decision.action === "refuse"
          ? { ...common, kind: "RefuseRequest", refusal: decision.refusal }
          : { ...common, kind: "SkipRequest", skip: decision.skip };
    return Buffer.from(JSON.stringify(body));
  }

  private once(decision: DispatchDecision, payload: Buffer): Promise<DispatchResult> {
    const host = this.options.addressFor?.(decision) ?? decision.hostIP;
    const authority = formatHostPort(host, this.options.port);
    const requestPath = decision.action === "apply" ? APPLY_PATH : decision.action === "refuse" ? REFUSE_PATH : SKIP_PATH;
    const headers = signRequest({ method: "POST", authority, path: requestPath, contentType: CONTENT_TYPE, body: payload }, this.options.signingKey(), {
      now: Date.now(),
      nonce: randomUUID(),
    });
    const client = this.options.scheme === "https" ? https : http;
    return new Promise((resolve) => {
      const req = client.request(
        {
          host,
          port: this.options.port,
          path: requestPath,
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
              if (answer.success) resolve({ ok: true, status: 200, result: answer.data.result });
              else resolve({ ok: false, status, reason: "bad-response", retryable: false });
            } else {
              const refusal = errorResponseSchema.safeParse(body);
              const retryAfter = Number(res.headers["retry-after"]);
              resolve({
                ok: false,
                status,
                // A reason from the table only: it becomes a metric label.
                reason: refusal.success && Object.hasOwn(REFUSAL, refusal.data.reason) ? refusal.data.reason : `http-${status}`,
                retryable: isRetryableRefusal(status),
                ...(Number.isFinite(retryAfter) && retryAfter > 0 ? { retryAfterMs: retryAfter * 1000 } : {}),
              });
            }
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (err: NodeJS.ErrnoException) => {
        resolve({ ok: false, status: 0, reason: err.code ?? err.message, retryable: true });
      });
      req.end(payload);
    });
  }

  /**
   * Trust these CA certificates (a PEM bundle: during a CA rotation, old and new) from the next
   * request on. Requests under way finish on their connections; those close after the deadline.
   */
  trust(ca: Buffer): void {
    if (this.options.scheme !== "https") return;
    const old = this.agent;
    this.agent = this.newAgent(ca);
    this.retired.add(old);
    setTimeout(
      () => {
        old.destroy();
        this.retired.delete(old);
      },
      (this.options.timeoutMs ?? 5000) + 1000,
    ).unref();
  }

  /** Connections kept alive while in use (an idle one closes after idleConnectionMs), at most as many per node as requests may be in flight. */
  private newAgent(ca: Buffer | undefined): http.Agent {
    const agentOptions = { keepAlive: true, maxSockets: this.slots.limit, timeout: this.options.idleConnectionMs ?? IDLE_CONNECTION_MS };
    return this.options.scheme === "https"
      ? new https.Agent({ ...agentOptions, maxCachedSessions: TLS_SESSIONS, ...(ca === undefined ? {} : { ca }) })
      : new http.Agent(agentOptions);
  }

  close(): void {
    this.agent.destroy();
    for (const old of this.retired) old.destroy();
  }
}
