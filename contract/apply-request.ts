// The wire contract between the decision function and the node-runner (docs/architecture.md §6), defined
// once and imported by both sides.
import { z } from "zod";
import { captureConfigInputSchema } from "./capture-config.ts";
import { MAX_REFUSAL_REASON } from "./mark.ts";
import { checkIPv4, checkIPv6 } from "./tokens.ts";

export const API_VERSION = "podnet/v1";
export const APPLY_PATH = "/v1/apply";
export const REFUSE_PATH = "/v1/refuse";
export const SKIP_PATH = "/v1/skip";
export const MAX_BODY_BYTES = 64 * 1024;
export const CONTENT_TYPE = "application/json";

/**
 * The name every node-runner's TLS certificate carries. The function connects to a node's IP and
 * checks the certificate against this name (one certificate serves every node).
 */
export const NODE_RUNNER_SERVER_NAME = "podnet-node-runner.podnet-system.svc";

const dnsLabel = z.string().regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, "must be a DNS label");
const dnsSubdomain = z
  .string()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, "must be a DNS subdomain");
const podIp = z.string().refine((ip) => checkIPv4(ip).ok || checkIPv6(ip).ok, "must be an IP address");

export const podRefSchema = z.strictObject({
  namespace: dnsLabel,
  name: dnsSubdomain,
  uid: z.string().regex(/^[0-9a-fA-F-]{36}$/, "must be a UID"),
  ips: z.array(podIp).min(1).max(4),
});

/** What every request to a node-runner carries: its version, the node, the pod, and why the function decided so. */
const podRequest = {
  apiVersion: z.literal(API_VERSION),
  node: dnsSubdomain,
  pod: podRefSchema,
  decision: z.strictObject({ reason: z.string().max(512), policy: z.string().max(128) }),
};

export const applyRequestSchema = z.strictObject({ ...podRequest, kind: z.literal("ApplyRequest"), capture: z.unknown() });

/** The pod's capture configuration can never be applied: mark it refused with this reason (its waiter then fails at once, saying why). */
export const refuseRequestSchema = z.strictObject({ ...podRequest, kind: z.literal("RefuseRequest"), refusal: z.string().min(1).max(MAX_REFUSAL_REASON) });

/**
 * The policy keeps the pod out of the mesh, and it carries the waiter: mark it skipped with this
 * reason (its waiter then lets it start, without interception).
 */
export const skipRequestSchema = z.strictObject({ ...podRequest, kind: z.literal("SkipRequest"), skip: z.string().min(1).max(MAX_REFUSAL_REASON) });

export type PodRef = z.infer<typeof podRefSchema>;
/** `capture` is checked separately (422, not 400) with parseCaptureConfig. */
export type ApplyRequest = Omit<z.infer<typeof applyRequestSchema>, "capture"> & { capture: z.infer<typeof captureConfigInputSchema> };
export type RefuseRequest = z.infer<typeof refuseRequestSchema>;
export type SkipRequest = z.infer<typeof skipRequestSchema>;

/** The node-runner's answers: 200 with the outcome, anything else with a reason. */
const appliedOutcome = z.object({ result: z.enum(["applied", "unchanged"]), netns: z.string(), rules: z.string() });
/** A refusal or a skip: marked so, or not (the pod is initialized already: what runs stays). */
const refusedOutcome = z.object({ result: z.enum(["refused", "skipped", "kept-initialized"]) });
/** What programming a pod did (the answer without its timing). */
export type ProgramOutcome = z.infer<typeof appliedOutcome> | z.infer<typeof refusedOutcome>;
export const applyResponseSchema = z.union([appliedOutcome.extend({ durationMs: z.number() }), refusedOutcome.extend({ durationMs: z.number() })]);
export type ApplyResponse = z.infer<typeof applyResponseSchema>;

export const errorResponseSchema = z.object({ error: z.string(), reason: z.string(), detail: z.string().optional() });
export type ErrorResponse = z.infer<typeof errorResponseSchema>;
