// Pod → capture config, the way istio-cni's sidecar plugin derives it: traffic annotations,
// the istio-proxy container's env and securityContext, and istio-cni's fixed values. Pure.
import {
  CaptureConfigError,
  DEFAULT_CAPTURE_CONFIG,
  parseCaptureConfig,
  type CaptureConfig,
  type CaptureConfigInput,
  type FieldSources,
} from "../contract/capture-config.ts";
import { PROXY_CONTAINER, podIPs, proxyContainer, type Pod } from "./pod.ts";

export const ANNOTATION = {
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

export const PROXY_ENV = {
  dnsCapture: "ISTIO_META_DNS_CAPTURE",
  invalidDrop: "INVALID_DROP",
  dualStack: "ISTIO_DUAL_STACK",
} as const;

/** Ports of the agent and Envoy (status, health, Prometheus) that inbound capture never takes. */
const ALWAYS_EXCLUDED_INBOUND_PORTS = ["15020", "15021", "15090"];
/** istio-cni's default outbound exclusion: the agent's status port. */
const DEFAULT_EXCLUDED_OUTBOUND_PORTS = "15020";
const PROXY_ID = "1337";

export interface DerivedCapture {
  readonly input: CaptureConfigInput;
  readonly sources: FieldSources;
}

/**
 * Derive the wire-form capture config and where each non-default value came from. Only the
 * interception mode and boolean env values are checked here; token validation is
 * `parseCaptureConfig`'s job (see `captureConfigFromPod`).
 */
export function deriveCaptureInput(pod: Pod): DerivedCapture {
  const annotations = pod.metadata.annotations ?? {};
  const sources: FieldSources = {};
  const issues: { field: string; source: string; value: unknown; reason: string }[] = [];
  const input: CaptureConfigInput = { ...DEFAULT_CAPTURE_CONFIG, dnsServersV4: [], dnsServersV6: [] };

  const fromAnnotation = (field: keyof CaptureConfigInput, key: string, fallback: string): string => {
    const value = annotations[key];
    if (value === undefined) return fallback;
    sources[field] = `annotation ${key}`;
    return value;
  };

  const mode = fromAnnotation("inboundInterceptionMode", ANNOTATION.interceptionMode, "REDIRECT");
  if (mode !== "REDIRECT" && mode !== "TPROXY") {
    issues.push({
      field: "inboundInterceptionMode",
      source: `annotation ${ANNOTATION.interceptionMode}`,
      value: mode,
      reason: mode === "NONE" ? "mode NONE asks for no traffic capture" : 'must be "REDIRECT" or "TPROXY"',
    });
  }
  input.inboundInterceptionMode = mode;
  input.outboundIPRangesInclude = fromAnnotation("outboundIPRangesInclude", ANNOTATION.includeOutboundIPRanges, "*");
  input.outboundIPRangesExclude = fromAnnotation("outboundIPRangesExclude", ANNOTATION.excludeOutboundIPRanges, "");
  input.inboundPortsInclude = fromAnnotation("inboundPortsInclude", ANNOTATION.includeInboundPorts, "*");
  input.outboundPortsInclude = fromAnnotation("outboundPortsInclude", ANNOTATION.includeOutboundPorts, "");
  input.outboundPortsExclude = fromAnnotation("outboundPortsExclude", ANNOTATION.excludeOutboundPorts, DEFAULT_EXCLUDED_OUTBOUND_PORTS);
  input.excludeInterfaces = fromAnnotation("excludeInterfaces", ANNOTATION.excludeInterfaces, "");
  const legacyVirtual = fromAnnotation("rerouteVirtualInterfaces", ANNOTATION.kubevirtInterfaces, "");
  input.rerouteVirtualInterfaces = fromAnnotation("rerouteVirtualInterfaces", ANNOTATION.rerouteVirtualInterfaces, legacyVirtual);

  // The agent's own ports are always excluded; exact duplicates are dropped, order kept.
  const excludeInbound = fromAnnotation("inboundPortsExclude", ANNOTATION.excludeInboundPorts, "");
  const combined = [...excludeInbound.split(","), ...ALWAYS_EXCLUDED_INBOUND_PORTS].filter((p, i, all) => all.indexOf(p) === i);
  input.inboundPortsExclude = combined.filter((p) => p !== "").join(",");

  const proxy = proxyContainer(pod);
  const env = new Map((proxy?.env ?? []).map((e) => [e.name, e.value ?? ""]));
  const envFlag = (field: keyof CaptureConfigInput, name: string): boolean => {
    const value = env.get(name);
    if (value === undefined) return false;
    const parsed = parseGoBool(value);
    sources[field] = `${PROXY_CONTAINER} env ${name}`;
    if (parsed === undefined) {
      issues.push({ field, source: `${PROXY_CONTAINER} env ${name}`, value, reason: "must be a boolean (true/false)" });
      return false;
    }
    return parsed;
  };
  const dnsCapture = envFlag("redirectDNS", PROXY_ENV.dnsCapture);
  input.redirectDNS = dnsCapture;
  input.captureAllDNS = dnsCapture;
  input.dropInvalid = envFlag("dropInvalid", PROXY_ENV.invalidDrop);
  input.dualStack = envFlag("dualStack", PROXY_ENV.dualStack);

  // A missing runAsUser/runAsGroup, or 0, means the proxy's default identity.
  const idFrom = (field: "proxyUID" | "proxyGID", key: "runAsUser" | "runAsGroup"): string => {
    const id = proxy?.securityContext?.[key];
    if (id === undefined || id === 0) return PROXY_ID;
    sources[field] = `${PROXY_CONTAINER} securityContext.${key}`;
    return String(id);
  };
  input.proxyUID = idFrom("proxyUID", "runAsUser");
  input.proxyGID = idFrom("proxyGID", "runAsGroup");

  input.enableIPv6 = podIPs(pod).some((ip) => ip.includes(":"));

  if (issues.length > 0) throw new CaptureConfigError(issues);
  return { input, sources };
}

/** Derive and validate: the capture config for a pod, or a `CaptureConfigError` naming the bad annotation. */
export function captureConfigFromPod(pod: Pod): CaptureConfig {
  const { input, sources } = deriveCaptureInput(pod);
  return parseCaptureConfig(input, sources);
}

/** Go's strconv.ParseBool, which istio-cni uses for these env values. */
export function parseGoBool(value: string): boolean | undefined {
  if (["1", "t", "T", "true", "TRUE", "True"].includes(value)) return true;
  if (["0", "f", "F", "false", "FALSE", "False"].includes(value)) return false;
  return undefined;
}
