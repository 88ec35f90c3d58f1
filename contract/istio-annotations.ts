// The pod annotations through which Istio's injector (in CNI mode) and users configure traffic
// capture: read by the function (capture-from-pod.ts) and by the waiter (its probe must use a
// port the capture does not exclude).
export const ISTIO_TRAFFIC_ANNOTATION = {
  interceptionMode: "sidecar.istio.io/interceptionMode",
  includeOutboundIPRanges: "traffic.sidecar.istio.io/includeOutboundIPRanges",
  excludeOutboundIPRanges: "traffic.sidecar.istio.io/excludeOutboundIPRanges",
  includeInboundPorts: "traffic.sidecar.istio.io/includeInboundPorts",
  excludeInboundPorts: "traffic.sidecar.istio.io/excludeInboundPorts",
  includeOutboundPorts: "traffic.sidecar.istio.io/includeOutboundPorts",
  excludeOutboundPorts: "traffic.sidecar.istio.io/excludeOutboundPorts",
  excludeInterfaces: "traffic.sidecar.istio.io/excludeInterfaces",
  rerouteVirtualInterfaces: "istio.io/reroute-virtual-interfaces",
  kubevirtInterfaces: "traffic.sidecar.istio.io/kubevirtInterfaces",
} as const;
