// The mark: the annotations only the node-runner writes on a pod (enforced by the admission
// policy in config/admission, docs/architecture.md §6): `initialized` with which netns and which
// rules once it has programmed the pod; `refused` with the reason when the pod's capture
// configuration can never be applied (a refusal can only make a pod fail, so the waiter trusts
// it and exits at once with the reason); `skipped` with the reason when the policy keeps the pod
// out of the mesh although it carries the waiter (the waiter lets it start, without interception:
// docs/architecture.md §4).

/**
 * The project's own annotation domain. Its annotations were under Istio's (`istio.io`), where
 * `istioctl analyze` reports every one as unknown (IST0108).
 */
export const ANNOTATION_DOMAIN = "podnet.github.io";

export const MARK = {
  status: `${ANNOTATION_DOMAIN}/status`,
  netns: `${ANNOTATION_DOMAIN}/netns`,
  rules: `${ANNOTATION_DOMAIN}/rules`,
  reason: `${ANNOTATION_DOMAIN}/reason`,
} as const;

/**
 * The mark's names until 0.1 (the original controller's, under Istio's domain). Read while a
 * cluster upgrades, so that a pod an older node-runner marked keeps its mark; removed from a pod
 * whenever a node-runner marks it; still protected by the admission policy. Drop in 0.3
 * (docs/reference.md, "Annotations").
 */
export const LEGACY_MARK = {
  status: "pod-network-controller.istio.io/status",
  netns: "pod-network-controller.istio.io/netns",
  rules: "pod-network-controller.istio.io/rules",
  reason: "pod-network-controller.istio.io/reason",
} as const;

export type Mark = { readonly [K in keyof typeof MARK]?: string };

/** A pod's mark: under the current names when it has a status there, else under the legacy ones. */
export function readMark(annotations: Readonly<Record<string, string>>): Mark {
  const keys = annotations[MARK.status] !== undefined || annotations[LEGACY_MARK.status] === undefined ? MARK : LEGACY_MARK;
  const mark: { -readonly [K in keyof typeof MARK]?: string } = {};
  for (const field of Object.keys(MARK) as (keyof typeof MARK)[]) {
    const value = annotations[keys[field]];
    if (value !== undefined) mark[field] = value;
  }
  return mark;
}

/** A merge patch's entries that remove the legacy mark (sent with every mark a node-runner writes). */
export const CLEAR_LEGACY_MARK: Readonly<Record<string, null>> = Object.fromEntries(Object.values(LEGACY_MARK).map((k) => [k, null]));

export const STATUS_INITIALIZED = "initialized";
export const STATUS_REFUSED = "refused";
export const STATUS_SKIPPED = "skipped";
/** A refusal's reason, as the mark carries it, is at most this long (the admission policy checks it). */
export const MAX_REFUSAL_REASON = 1024;

/** A refusal's reason as the mark carries it and the waiter prints it: one line, within the bound. */
export function refusalReason(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length <= MAX_REFUSAL_REASON ? line : `${line.slice(0, MAX_REFUSAL_REASON - 1)}…`;
}
