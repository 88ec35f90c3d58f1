// The decision policy (docs/architecture.md §4): a YAML document operators edit (a mounted ConfigMap).
// Validated with a schema; its digest travels in every apply request.
import { createHash } from "node:crypto";
import { z } from "zod";
import { parse as parseYaml } from "yaml";
import {
  CaptureConfigError,
  DEFAULT_CAPTURE_CONFIG,
  captureConfigInputSchema,
  formatIssues,
  type CaptureConfigInput,
  parseCaptureConfig,
} from "../contract/capture-config.ts";
import { errorMessage, formatSchemaIssues } from "../lib/errors.ts";

/** The ConfigMap the function mounts its policy from, and its key (config/function/policy.configmap.yaml). */
export const POLICY_CONFIGMAP = "podnet-policy";
export const POLICY_KEY = "policy.yaml";

export const POLICY_MODES = ["enforce", "dry-run", "fail-open"] as const;
export type PolicyMode = (typeof POLICY_MODES)[number];

const overridesSchema = captureConfigInputSchema.partial().strict();

const labelSelectorSchema = z.strictObject({
  matchLabels: z.record(z.string(), z.string()).default({}),
  matchExpressions: z
    .array(
      z.strictObject({
        key: z.string().min(1),
        operator: z.enum(["In", "NotIn", "Exists", "DoesNotExist"]),
        values: z.array(z.string()).default([]),
      }),
    )
    .default([]),
});

export const policySchema = z.strictObject({
  /**
   * enforce: dispatch apply requests; dry-run: decide and log, apply nothing; fail-open: the
   * incident switch, every waiting pod is released to start without rules (pods with rules keep them).
   */
  mode: z.enum(POLICY_MODES).default("enforce"),
  /** Free text an operator sets (e.g. a Git revision); shown beside the digest. */
  revision: z.string().max(64).optional(),
  namespaces: z
    .strictObject({
      /** Empty: every namespace not excluded. */
      include: z.array(z.string()).default([]),
      exclude: z.array(z.string()).default(["kube-system", "istio-system"]),
    })
    .default({ include: [], exclude: ["kube-system", "istio-system"] }),
  /** Pods must also match this selector (in addition to being sidecar-injected). */
  podSelector: labelSelectorSchema.optional(),
  /** Honour the original controller's opt-in annotation istio-pod-network-controller/initialize: "true". */
  legacyOptIn: z.boolean().default(true),
  capture: z
    .strictObject({
      defaults: overridesSchema.default({}),
      namespaces: z.record(z.string(), overridesSchema).default({}),
    })
    .default({ defaults: {}, namespaces: {} }),
  /** How long a waiter may keep running after the pod was marked before the pod is re-dispatched. */
  redispatchWaitingAfterSeconds: z.number().int().min(5).max(3600).default(30),
});

export type PolicyDocument = z.infer<typeof policySchema>;
export type LabelSelector = z.infer<typeof labelSelectorSchema>;

export interface Policy {
  readonly document: PolicyDocument;
  /** "sha256:<12 hex>" of the normalized document, plus the operator's revision if set. */
  readonly id: string;
}

export class PolicyError extends Error {
  override name = "PolicyError";
}

/**
 * Parse and validate a policy document. `controllerNamespace` is always excluded: the
 * controller never programs its own pods.
 */
export function parsePolicy(text: string, controllerNamespace?: string): Policy {
  let raw: unknown;
  try {
    raw = text.trim() === "" ? {} : parseYaml(text, { maxAliasCount: 50 });
  } catch (err) {
    throw new PolicyError(`policy is not valid YAML: ${errorMessage(err)}`);
  }
  const parsed = policySchema.safeParse(raw ?? {});
  if (!parsed.success) {
    throw new PolicyError(`invalid policy: ${formatSchemaIssues(parsed.error, "(document)")}`);
  }
  const document = parsed.data;
  if (controllerNamespace !== undefined && !document.namespaces.exclude.includes(controllerNamespace)) {
    document.namespaces.exclude.push(controllerNamespace);
  }
  // Every override must make a valid capture config on top of Istio's defaults.
  const check = (where: string, overrides: object): void => {
    try {
      parseCaptureConfig({ ...DEFAULT_CAPTURE_CONFIG, ...overrides });
    } catch (err) {
      if (err instanceof CaptureConfigError) throw new PolicyError(`invalid policy: ${where}: ${formatIssues(err.issues)}`);
      throw err;
    }
  };
  check("capture.defaults", document.capture.defaults);
  for (const [ns, overrides] of Object.entries(document.capture.namespaces)) check(`capture.namespaces.${ns}`, { ...document.capture.defaults, ...overrides });

  const digest = createHash("sha256").update(JSON.stringify(document)).digest("hex").slice(0, 12);
  return { document, id: document.revision === undefined ? `sha256:${digest}` : `${document.revision}@sha256:${digest}` };
}

/** The policy's capture overrides for a namespace, applied on top of the pod-derived config. */
export function applyCaptureOverrides(input: CaptureConfigInput, policy: PolicyDocument, namespace: string): CaptureConfigInput {
  const out: Record<string, unknown> = { ...input };
  for (const overrides of [policy.capture.defaults, policy.capture.namespaces[namespace] ?? {}]) {
    for (const [field, value] of Object.entries(overrides)) if (value !== undefined) out[field] = value;
  }
  return out as CaptureConfigInput;
}

/** Kubernetes label-selector semantics for the subset the policy allows. */
export function matchesSelector(labels: Readonly<Record<string, string>>, selector: LabelSelector): boolean {
  for (const [k, v] of Object.entries(selector.matchLabels)) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions) {
    const value = labels[e.key];
    const ok =
      e.operator === "In"
        ? value !== undefined && e.values.includes(value)
        : e.operator === "NotIn"
          ? value === undefined || !e.values.includes(value)
          : e.operator === "Exists"
            ? value !== undefined
            : value === undefined;
    if (!ok) return false;
  }
  return true;
}
