// The capture config: what the decision function sends and the node-runner renders.
//
// On the wire it uses Istio's own field names and value forms (decimal strings, comma lists:
// those of istio-iptables' configuration). `parseCaptureConfig` is the only way to obtain a
// `CaptureConfig`, the validated form the renderers accept: a value that has not passed its
// check cannot reach a rule.
import { z } from "zod";
import {
  checkCidr,
  checkGroup,
  checkInterfaceName,
  checkIPv4,
  checkIPv6,
  checkListenPort,
  checkMark,
  checkNumericId,
  checkPort,
  checkRouteTable,
  splitList,
  type Cidr,
  type TokenCheck,
} from "./tokens.ts";

/** Upper bound on items in any list field: a pod needs a handful, not thousands of rules. */
export const MAX_LIST_ITEMS = 256;
/** Upper bound on the length of any string field. */
export const MAX_FIELD_LENGTH = 4096;

const text = z.string().max(MAX_FIELD_LENGTH);

/** Wire form. Every field is present: defaults are the sender's business, not the node's. */
export const captureConfigInputSchema = z
  .object({
    proxyPort: text,
    inboundCapturePort: text,
    inboundTunnelPort: text,
    proxyUID: text,
    proxyGID: text,
    inboundInterceptionMode: text,
    inboundPortsInclude: text,
    inboundPortsExclude: text,
    outboundIPRangesInclude: text,
    outboundIPRangesExclude: text,
    outboundPortsInclude: text,
    outboundPortsExclude: text,
    excludeInterfaces: text,
    rerouteVirtualInterfaces: text,
    inboundTProxyMark: text,
    inboundTProxyRouteTable: text,
    ownerGroupsInclude: text,
    ownerGroupsExclude: text,
    hostIPv4LoopbackCidr: text,
    redirectDNS: z.boolean(),
    captureAllDNS: z.boolean(),
    dnsServersV4: z.array(text).max(MAX_LIST_ITEMS),
    dnsServersV6: z.array(text).max(MAX_LIST_ITEMS),
    dropInvalid: z.boolean(),
    enableIPv6: z.boolean(),
    dualStack: z.boolean(),
  })
  .strict();

export type CaptureConfigInput = z.infer<typeof captureConfigInputSchema>;
export type CaptureField = keyof CaptureConfigInput;

/** Istio's defaults for a sidecar (istio-iptables flags and istio-cni constants). */
export const DEFAULT_CAPTURE_CONFIG: Readonly<CaptureConfigInput> = Object.freeze({
  proxyPort: "15001",
  inboundCapturePort: "15006",
  inboundTunnelPort: "15008",
  proxyUID: "1337",
  proxyGID: "1337",
  inboundInterceptionMode: "REDIRECT",
  inboundPortsInclude: "*",
  inboundPortsExclude: "",
  outboundIPRangesInclude: "*",
  outboundIPRangesExclude: "",
  outboundPortsInclude: "",
  outboundPortsExclude: "",
  excludeInterfaces: "",
  rerouteVirtualInterfaces: "",
  inboundTProxyMark: "1337",
  inboundTProxyRouteTable: "133",
  ownerGroupsInclude: "*",
  ownerGroupsExclude: "",
  hostIPv4LoopbackCidr: "127.0.0.1/32",
  redirectDNS: false,
  captureAllDNS: false,
  dnsServersV4: [],
  dnsServersV6: [],
  dropInvalid: false,
  enableIPv6: false,
  dualStack: false,
});

declare const validated: unique symbol;

/** A capture config whose every value passed validation. Only `parseCaptureConfig` makes one. */
export interface CaptureConfig {
  readonly [validated]: true;
  readonly proxyPort: string;
  readonly inboundCapturePort: string;
  readonly inboundTunnelPort: string;
  readonly proxyUID: readonly string[];
  readonly proxyGID: readonly string[];
  /** Only "TPROXY" selects transparent-proxy inbound capture; "" and "REDIRECT" mean NAT. */
  readonly tproxy: boolean;
  /** "*" = every port; a list (possibly empty after dropping empty items); null = inbound capture off. */
  readonly inboundPortsInclude: "*" | readonly string[] | null;
  readonly inboundPortsExclude: readonly string[];
  /** "*" = every destination; a list (empty = none). */
  readonly outboundIPRangesInclude: "*" | readonly Cidr[];
  readonly outboundIPRangesExclude: readonly Cidr[];
  readonly outboundPortsInclude: readonly string[];
  readonly outboundPortsExclude: readonly string[];
  readonly excludeInterfaces: readonly string[];
  readonly rerouteVirtualInterfaces: readonly string[];
  readonly inboundTProxyMark: string;
  readonly inboundTProxyRouteTable: string;
  readonly ownerGroupsInclude: "*" | readonly string[];
  readonly ownerGroupsExclude: readonly string[];
  readonly hostIPv4LoopbackCidr: string;
  readonly redirectDNS: boolean;
  readonly captureAllDNS: boolean;
  readonly dnsServersV4: readonly string[];
  readonly dnsServersV6: readonly string[];
  readonly dropInvalid: boolean;
  readonly enableIPv6: boolean;
  readonly dualStack: boolean;
}

export interface CaptureIssue {
  /** The capture-config field. */
  readonly field: string;
  /** Where the value came from, e.g. `annotation traffic.sidecar.istio.io/excludeInterfaces`. */
  readonly source?: string;
  /** The offending value (the single bad item of a list where there is one). */
  readonly value: unknown;
  readonly reason: string;
}

/** Longest quoted value in a message: a tenant's 256 KiB annotation is not copied into logs and Events. */
export const MAX_QUOTED_VALUE = 120;
/** Issues named in one message; the rest are counted. */
export const MAX_LISTED_ISSUES = 8;

/** A value as a message quotes it: JSON, cut to MAX_QUOTED_VALUE characters with its full length named. */
export function quoteValue(value: unknown): string {
  // undefined (a missing value) has no JSON form.
  const json = (JSON.stringify(value) as string | undefined) ?? String(value);
  return json.length <= MAX_QUOTED_VALUE ? json : `${json.slice(0, MAX_QUOTED_VALUE)}… (${json.length} characters)`;
}

export function formatIssue(issue: CaptureIssue): string {
  const where = issue.source ?? `capture field ${issue.field}`;
  return `${where}: ${quoteValue(issue.value)} is invalid: ${issue.reason}`;
}

/** A value read with Istio's lenient semantics (see `DerivedCapture.warnings`). */
export function formatWarning(issue: CaptureIssue): string {
  const where = issue.source ?? `capture field ${issue.field}`;
  return `${where}: ${quoteValue(issue.value)} ${issue.reason}`;
}

/** Issues joined by "; ", at most MAX_LISTED_ISSUES of them, then how many more there are. */
export function formatIssues(issues: readonly CaptureIssue[], format: (issue: CaptureIssue) => string = formatIssue): string {
  const listed = issues.slice(0, MAX_LISTED_ISSUES).map(format);
  if (issues.length > MAX_LISTED_ISSUES) listed.push(`and ${issues.length - MAX_LISTED_ISSUES} more`);
  return listed.join("; ");
}

export class CaptureConfigError extends Error {
  readonly issues: readonly CaptureIssue[];
  constructor(issues: readonly CaptureIssue[]) {
    super(formatIssues(issues));
    this.name = "CaptureConfigError";
    this.issues = issues;
  }
}

/** Where each field's value came from, for error messages (field → description). */
export type FieldSources = Partial<Record<CaptureField, string>>;

/**
 * Validate a wire-form capture config. Returns the validated config, or throws a
 * `CaptureConfigError` listing every problem found (each naming its field or source), after
 * `priorIssues` (problems the caller found upstream, e.g. in the pod's annotations).
 */
export function parseCaptureConfig(input: unknown, sources: FieldSources = {}, priorIssues: readonly CaptureIssue[] = []): CaptureConfig {
  const shape = captureConfigInputSchema.safeParse(input);
  if (!shape.success) {
    throw new CaptureConfigError([
      ...priorIssues,
      ...shape.error.issues.map((i) => {
        const field = i.path.map(String).join(".") || "(capture)";
        const source = sources[i.path[0] as CaptureField];
        return {
          field,
          ...(source === undefined ? {} : { source }),
          value: valueAt(input, i.path),
          reason: i.message,
        };
      }),
    ]);
  }
  const raw = shape.data;
  const issues: CaptureIssue[] = [...priorIssues];

  const report = (field: CaptureField, value: unknown, reason: string): void => {
    if (priorIssues.some((i) => i.field === field && i.value === value)) return;
    const source = sources[field];
    issues.push({ field, ...(source === undefined ? {} : { source }), value, reason });
  };

  const single = (field: CaptureField, check: (t: string) => TokenCheck): string => {
    const value = raw[field] as string;
    const c = check(value);
    if (!c.ok) report(field, value, c.reason);
    return value;
  };

  const items = (field: CaptureField, values: readonly string[], check: (t: string) => TokenCheck): string[] => {
    if (values.length > MAX_LIST_ITEMS) {
      report(field, raw[field], `at most ${MAX_LIST_ITEMS} items are allowed`);
      return [];
    }
    for (const v of values) {
      const c = check(v);
      if (!c.ok) report(field, v, c.reason);
    }
    return [...values];
  };

  const list = (field: CaptureField, check: (t: string) => TokenCheck): string[] => items(field, splitList(raw[field] as string), check);

  const wildcardOrList = (field: CaptureField, check: (t: string) => TokenCheck): "*" | string[] => (raw[field] === "*" ? "*" : list(field, check));

  const cidrs = (field: CaptureField): Cidr[] => {
    const out: Cidr[] = [];
    const values = splitList(raw[field] as string);
    if (values.length > MAX_LIST_ITEMS) {
      report(field, raw[field], `at most ${MAX_LIST_ITEMS} items are allowed`);
      return out;
    }
    for (const v of values) {
      if (v === "*") {
        report(field, v, "a wildcard is not allowed here");
        continue;
      }
      const c = checkCidr(v);
      if (c.ok) out.push(c.value);
      else report(field, v, c.reason);
    }
    return out;
  };

  const mode = raw.inboundInterceptionMode;
  if (!["", "REDIRECT", "TPROXY"].includes(mode)) {
    report("inboundInterceptionMode", mode, 'must be "REDIRECT" or "TPROXY"');
  }

  const loopback = checkCidr(raw.hostIPv4LoopbackCidr);
  if (!loopback.ok) report("hostIPv4LoopbackCidr", raw.hostIPv4LoopbackCidr, loopback.reason);
  else if (loopback.value.family !== 4) report("hostIPv4LoopbackCidr", raw.hostIPv4LoopbackCidr, "must be an IPv4 CIDR");

  const config = {
    proxyPort: single("proxyPort", checkListenPort),
    inboundCapturePort: single("inboundCapturePort", checkListenPort),
    inboundTunnelPort: single("inboundTunnelPort", checkListenPort),
    proxyUID: list("proxyUID", checkNumericId),
    proxyGID: list("proxyGID", checkNumericId),
    tproxy: mode === "TPROXY",
    inboundPortsInclude: raw.inboundPortsInclude === "" ? null : wildcardOrList("inboundPortsInclude", checkPort),
    inboundPortsExclude: list("inboundPortsExclude", checkPort),
    outboundIPRangesInclude: raw.outboundIPRangesInclude === "*" ? ("*" as const) : cidrs("outboundIPRangesInclude"),
    outboundIPRangesExclude: cidrs("outboundIPRangesExclude"),
    outboundPortsInclude: list("outboundPortsInclude", checkPort),
    outboundPortsExclude: list("outboundPortsExclude", checkPort),
    excludeInterfaces: list("excludeInterfaces", checkInterfaceName),
    rerouteVirtualInterfaces: list("rerouteVirtualInterfaces", checkInterfaceName),
    inboundTProxyMark: single("inboundTProxyMark", checkMark),
    inboundTProxyRouteTable: single("inboundTProxyRouteTable", checkRouteTable),
    ownerGroupsInclude: wildcardOrList("ownerGroupsInclude", checkGroup),
    ownerGroupsExclude: list("ownerGroupsExclude", checkGroup),
    hostIPv4LoopbackCidr: raw.hostIPv4LoopbackCidr,
    redirectDNS: raw.redirectDNS,
    captureAllDNS: raw.captureAllDNS,
    dnsServersV4: items("dnsServersV4", raw.dnsServersV4, checkIPv4),
    dnsServersV6: items("dnsServersV6", raw.dnsServersV6, checkIPv6),
    dropInvalid: raw.dropInvalid,
    enableIPv6: raw.enableIPv6,
    dualStack: raw.dualStack,
  };
  if (issues.length > 0) throw new CaptureConfigError(issues);
  return config as unknown as CaptureConfig;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = input;
  for (const key of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[key];
  }
  return v;
}

/** Istio's rule: DNS capture needs either capture-all or at least one listed server. */
export function effectiveRedirectDNS(c: CaptureConfig): boolean {
  return c.redirectDNS && (c.captureAllDNS || c.dnsServersV4.length > 0 || c.dnsServersV6.length > 0);
}

/** Outbound include ranges that contain a loopback address disable the "lo → RETURN" shortcut. */
export function includesLoopback(c: CaptureConfig): boolean {
  return c.outboundIPRangesInclude !== "*" && c.outboundIPRangesInclude.some((r) => r.loopback);
}
