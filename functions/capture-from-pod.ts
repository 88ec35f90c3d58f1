// Pod → capture config, the way istio-cni's sidecar plugin derives it: traffic annotations,
// the istio-proxy container's env and securityContext, and istio-cni's fixed values. Pure.
import { type CaptureIssue, DEFAULT_CAPTURE_CONFIG, type CaptureConfigInput, type CaptureField, type FieldSources } from "../contract/capture-config.ts";
import { ISTIO_TRAFFIC_ANNOTATION as ANNOTATION } from "../contract/istio-annotations.ts";
import { PROXY_CONTAINER, podIPs, proxyContainer, type Pod } from "./pod.ts";

export { ANNOTATION };

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
  /**
   * Values Istio reads but does not refuse (a proxy env flag that is not a boolean is read as
   * false and logged); the pod still gets rules, and the operator is told.
   */
  readonly warnings: readonly CaptureIssue[];
  /** Problems with the annotations as a whole; `parseCaptureConfig` reports them with its own. */
  readonly issues: readonly CaptureIssue[];
}

/** The list annotations, the field each feeds, and whether `*` alone is a wildcard there. */
export const LIST_ANNOTATIONS: readonly { key: string; field: CaptureField; wildcard: boolean }[] = [
  { key: ANNOTATION.includeOutboundIPRanges, field: "outboundIPRangesInclude", wildcard: true },
  { key: ANNOTATION.excludeOutboundIPRanges, field: "outboundIPRangesExclude", wildcard: false },
  { key: ANNOTATION.includeInboundPorts, field: "inboundPortsInclude", wildcard: true },
  { key: ANNOTATION.excludeInboundPorts, field: "inboundPortsExclude", wildcard: true },
  { key: ANNOTATION.includeOutboundPorts, field: "outboundPortsInclude", wildcard: true },
  { key: ANNOTATION.excludeOutboundPorts, field: "outboundPortsExclude", wildcard: true },
  { key: ANNOTATION.excludeInterfaces, field: "excludeInterfaces", wildcard: false },
  { key: ANNOTATION.rerouteVirtualInterfaces, field: "rerouteVirtualInterfaces", wildcard: false },
  { key: ANNOTATION.kubevirtInterfaces, field: "rerouteVirtualInterfaces", wildcard: false },
];

/**
 * Derive the wire-form capture config and where each non-default value came from, as
 * istio-cni's `NewRedirect` does. Checked here: what istio-cni checks on the annotation as a
 * whole (the interception mode; no empty item in a list). Token validation is
 * `parseCaptureConfig`'s job (the decision runs both).
 */
export function deriveCaptureInput(pod: Pod): DerivedCapture {
  const annotations = pod.metadata.annotations ?? {};
  const sources: FieldSources = {};
  const issues: CaptureIssue[] = [];
  const warnings: CaptureIssue[] = [];
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
  // The deprecated kubevirt annotation counts only when the new one is absent (and is only
  // checked then, as istio-cni does).
  const reroute = annotations[ANNOTATION.rerouteVirtualInterfaces] !== undefined ? ANNOTATION.rerouteVirtualInterfaces : ANNOTATION.kubevirtInterfaces;
  input.rerouteVirtualInterfaces = fromAnnotation("rerouteVirtualInterfaces", reroute, "");

  // istio-cni refuses a list with an empty item ("80,", ",80", "80,,90", ","): the config
  // parser downstream would silently drop it, so it is caught here, on the annotation.
  for (const { key, field, wildcard } of LIST_ANNOTATIONS) {
    const value = annotations[key];
    if (value === undefined || value === "" || (wildcard && value === "*")) continue;
    if (key === ANNOTATION.kubevirtInterfaces && reroute !== key) continue;
    if (value.split(",").includes("")) {
      issues.push({ field, source: `annotation ${key}`, value, reason: "a comma-separated list may not have an empty item" });
    }
  }

  // The agent's own ports are always excluded; exact duplicates are dropped, order kept.
  const excludeInbound = fromAnnotation("inboundPortsExclude", ANNOTATION.excludeInboundPorts, "");
  // A Set keeps the first of each and its order: linear in the annotation's size (a tenant
  // controls that size; indexOf inside filter was quadratic in it).
  const combined = new Set([...excludeInbound.split(","), ...ALWAYS_EXCLUDED_INBOUND_PORTS]);
  combined.delete("");
  input.inboundPortsExclude = [...combined].join(",");

  // Istio reads these with strconv.ParseBool and treats anything else (including "" and a
  // value given through valueFrom, which it cannot see) as false, with a log line.
  const proxy = proxyContainer(pod);
  const env = new Map((proxy?.env ?? []).map((e) => [e.name, e]));
  const envFlag = (field: keyof CaptureConfigInput, name: string): boolean => {
    const entry = env.get(name);
    if (entry === undefined) return false;
    const source = `${PROXY_CONTAINER} env ${name}`;
    sources[field] = source;
    const value = entry.value ?? "";
    const parsed = parseGoBool(value);
    if (parsed !== undefined) return parsed;
    const fromRef = entry.valueFrom !== undefined && entry.valueFrom !== null;
    const reason = fromRef
      ? "is set with valueFrom, which Istio cannot read: treated as false"
      : "is not a boolean (true/false): treated as false, as Istio does";
    warnings.push({ field, source, value: fromRef ? "(valueFrom)" : value, reason });
    return false;
  };
  const dnsCapture = envFlag("redirectDNS", PROXY_ENV.dnsCapture);
  input.redirectDNS = dnsCapture;
  input.captureAllDNS = dnsCapture;
  input.dropInvalid = envFlag("dropInvalid", PROXY_ENV.invalidDrop);
  const dualStack = envFlag("dualStack", PROXY_ENV.dualStack);
  input.dualStack = dualStack;

  // A missing runAsUser/runAsGroup, or 0, means the proxy's default identity.
  const idFrom = (field: "proxyUID" | "proxyGID", key: "runAsUser" | "runAsGroup"): string => {
    const id = proxy?.securityContext?.[key];
    if (id === undefined || id === 0) return PROXY_ID;
    sources[field] = `${PROXY_CONTAINER} securityContext.${key}`;
    return String(id);
  };
  input.proxyUID = idFrom("proxyUID", "runAsUser");
  input.proxyGID = idFrom("proxyGID", "runAsGroup");

  // Istio enables IPv6 rules from the pod's first address, or from any IPv6 address when the
  // proxy is dual-stack: a dual-stack pod whose proxy is not gets IPv4 rules only (its Envoy
  // listens on IPv4 only, so redirecting IPv6 there would break those connections).
  const ips = podIPs(pod);
  const hasV6 = ips.some((ip) => ip.includes(":"));
  const hasV4 = ips.some((ip) => !ip.includes(":"));
  input.enableIPv6 = hasV6 && (!hasV4 || dualStack);

  return { input, sources, warnings, issues };
}

/** Go's strconv.ParseBool, which istio-cni uses for these env values. */
export function parseGoBool(value: string): boolean | undefined {
  if (["1", "t", "T", "true", "TRUE", "True"].includes(value)) return true;
  if (["0", "f", "F", "false", "FALSE", "False"].includes(value)) return false;
  return undefined;
}
