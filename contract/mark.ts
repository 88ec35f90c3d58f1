// The mark: the annotations only the node-runner writes on a pod (enforced by the admission
// policy in config/admission, docs/architecture.md §6): `initialized` with which netns and which
// rules once it has programmed the pod (the original controller's key and value), or `refused`
// with the reason when the pod's capture configuration can never be applied. A refusal can only
// make a pod fail, so the waiter trusts it and exits at once with the reason.
export const MARK = {
  status: "pod-network-controller.istio.io/status",
  netns: "pod-network-controller.istio.io/netns",
  rules: "pod-network-controller.istio.io/rules",
  reason: "pod-network-controller.istio.io/reason",
} as const;

export const STATUS_INITIALIZED = "initialized";
export const STATUS_REFUSED = "refused";
/** A refusal's reason, as the mark carries it, is at most this long (the admission policy checks it). */
export const MAX_REFUSAL_REASON = 1024;

/** A refusal's reason as the mark carries it and the waiter prints it: one line, within the bound. */
export function refusalReason(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length <= MAX_REFUSAL_REASON ? line : `${line.slice(0, MAX_REFUSAL_REASON - 1)}…`;
}
