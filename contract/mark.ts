// The mark: the annotations only the node-runner writes on a pod it has programmed (the
// original controller's key and value, plus which netns and which rules), enforced by the
// admission policy in config/admission (docs/architecture.md §6).
export const MARK = {
  status: "pod-network-controller.istio.io/status",
  netns: "pod-network-controller.istio.io/netns",
  rules: "pod-network-controller.istio.io/rules",
} as const;

export const STATUS_INITIALIZED = "initialized";
