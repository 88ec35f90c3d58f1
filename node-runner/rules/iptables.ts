// Capture config → iptables-restore input, rule for rule what Istio's istio-iptables
// generates (tools/istio-iptables/pkg/capture), so that a pod programmed from the node is
// indistinguishable from one programmed by istio-init. Pure: no I/O.
import { effectiveRedirectDNS, includesLoopback, type CaptureConfig } from "../../contract/capture-config.ts";
import type { Cidr } from "../../contract/tokens.ts";
import { restoreText } from "./iptables-text.ts";
import { CHAIN, DNS_PROXY_PORT, OUTBOUND_MARK, type Family, type IptablesRule, type Table } from "./istio.ts";

export interface IptablesFamilyPlan {
  readonly family: Family;
  readonly rules: readonly IptablesRule[];
  /** Input for `iptables-restore --noflush` (or ip6tables-restore), newline-terminated. */
  readonly restore: string;
}

export interface IptablesPlan {
  readonly v4: IptablesFamilyPlan;
  /** Null when the config does not enable IPv6. */
  readonly v6: IptablesFamilyPlan | null;
}

const V6_LOOPBACK = "::1/128";
const V4_PASSTHROUGH_SOURCE = "127.0.0.6/32";
const V6_PASSTHROUGH_SOURCE = "::6/128";

/** Collects rules per family in generation order, mirroring Istio's rule builder. */
class RuleBuilder {
  readonly v4: IptablesRule[] = [];
  readonly v6: IptablesRule[] = [];
  constructor(private readonly ipv6: boolean) {}

  appendV4(table: Table, chain: string, ...args: string[]): void {
    this.v4.push({ table, chain, args });
  }
  appendV6(table: Table, chain: string, ...args: string[]): void {
    if (this.ipv6) this.v6.push({ table, chain, args });
  }
  append(table: Table, chain: string, ...args: string[]): void {
    this.appendV4(table, chain, ...args);
    this.appendV6(table, chain, ...args);
  }
  /** Same rule for both families with a family-specific address in it. */
  appendVersioned(v4: string, v6: string, table: Table, chain: string, args: (addr: string) => string[]): void {
    this.appendV4(table, chain, ...args(v4));
    this.appendV6(table, chain, ...args(v6));
  }
  insertV4(table: Table, chain: string, position: number, ...args: string[]): void {
    this.v4.push({ table, chain, position, args });
  }
  insertV6(table: Table, chain: string, position: number, ...args: string[]): void {
    if (this.ipv6) this.v6.push({ table, chain, position, args });
  }
  insert(table: Table, chain: string, position: number, ...args: string[]): void {
    this.insertV4(table, chain, position, ...args);
    this.insertV6(table, chain, position, ...args);
  }
}

/** Render the rules for a validated capture config. */
export function renderIptables(c: CaptureConfig): IptablesPlan {
  const b = new RuleBuilder(c.enableIPv6);
  const redirectDNS = effectiveRedirectDNS(c);
  const loopbackIncluded = includesLoopback(c);
  const hostLoopback = c.hostIPv4LoopbackCidr;

  // Excluded interfaces skip capture entirely.
  for (const iface of c.excludeInterfaces) {
    b.append("nat", "PREROUTING", "-i", iface, "-j", "RETURN");
    b.append("nat", "OUTPUT", "-o", iface, "-j", "RETURN");
  }
  if (c.tproxy) {
    for (const iface of c.excludeInterfaces) {
      b.append("mangle", "PREROUTING", "-i", iface, "-j", "RETURN");
      b.append("mangle", "OUTPUT", "-o", iface, "-j", "RETURN");
    }
  }
  // Virtual interfaces are not inbound: never capture what arrives on them as inbound.
  for (const iface of c.rerouteVirtualInterfaces) {
    b.insert("nat", "PREROUTING", 1, "-i", iface, "-j", "RETURN");
  }
  if (c.dropInvalid) {
    b.append("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", CHAIN.drop);
    b.append("mangle", CHAIN.drop, "-j", "DROP");
  }

  b.append("nat", CHAIN.inbound, "-p", "tcp", "--dport", c.inboundTunnelPort, "-j", "RETURN");
  b.append("nat", CHAIN.redirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.proxyPort);
  b.append("nat", CHAIN.inRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.inboundCapturePort);

  inboundRules(b, c);

  b.append("nat", "OUTPUT", "-j", CHAIN.output);
  for (const port of c.outboundPortsExclude) {
    b.append("nat", CHAIN.output, "-p", "tcp", "--dport", port, "-j", "RETURN");
    b.append("nat", CHAIN.output, "-p", "udp", "--dport", port, "-j", "RETURN");
  }
  // Inbound passthrough connections are made from 127.0.0.6 / ::6.
  b.appendVersioned(V4_PASSTHROUGH_SOURCE, V6_PASSTHROUGH_SOURCE, "nat", CHAIN.output, (src) => ["-o", "lo", "-s", src, "-j", "RETURN"]);

  for (const [ids, match] of [
    [c.proxyUID, "--uid-owner"],
    [c.proxyGID, "--gid-owner"],
  ] as const) {
    for (const id of ids) {
      // App → VIP → own Envoy → own app: send back through inbound capture.
      const dnsAwareUid = redirectDNS && match === "--uid-owner";
      b.appendVersioned(hostLoopback, V6_LOOPBACK, "nat", CHAIN.output, (addr) => [
        "-o",
        "lo",
        "!",
        "-d",
        addr,
        "-p",
        "tcp",
        ...(dnsAwareUid ? ["-m", "multiport", "!", "--dports", `53,${c.inboundTunnelPort}`] : ["!", "--dport", c.inboundTunnelPort]),
        "-m",
        "owner",
        match,
        id,
        "-j",
        CHAIN.inRedirect,
      ]);
      // App → own endpoint over lo is not captured, unless loopback was asked for explicitly.
      if (!loopbackIncluded) {
        b.append("nat", CHAIN.output, "-o", "lo", ...(redirectDNS ? ["-p", "tcp", "!", "--dport", "53"] : []), "-m", "owner", "!", match, id, "-j", "RETURN");
      }
      // Envoy's own traffic is never re-captured.
      b.append("nat", CHAIN.output, "-m", "owner", match, id, "-j", "RETURN");
    }
  }

  ownerGroupRules(b, c);
  if (redirectDNS) dnsRules(b, c);

  b.appendVersioned(hostLoopback, V6_LOOPBACK, "nat", CHAIN.output, (addr) => ["-d", addr, "-j", "RETURN"]);
  const excluded = c.outboundIPRangesExclude;
  for (const r of excluded.filter((r) => r.family === 4)) b.appendV4("nat", CHAIN.output, "-d", r.text, "-j", "RETURN");
  for (const r of excluded.filter((r) => r.family === 6)) b.appendV6("nat", CHAIN.output, "-d", r.text, "-j", "RETURN");

  for (const port of c.outboundPortsInclude) {
    b.append("nat", CHAIN.output, "-p", "tcp", "--dport", port, "-j", CHAIN.redirect);
  }
  outboundIncludeRules(b, c, 4);
  outboundIncludeRules(b, c, 6);

  if (c.tproxy) tproxyMarkRules(b, c);

  return {
    v4: { family: 4, rules: b.v4, restore: restoreText(b.v4) },
    v6: c.enableIPv6 ? { family: 6, rules: b.v6, restore: restoreText(b.v6) } : null,
  };
}

function inboundRules(b: RuleBuilder, c: CaptureConfig): void {
  const include = c.inboundPortsInclude;
  if (include === null) return;
  const table: Table = c.tproxy ? "mangle" : "nat";
  if (c.tproxy) {
    b.append("mangle", CHAIN.divert, "-j", "MARK", "--set-mark", c.inboundTProxyMark);
    b.append("mangle", CHAIN.divert, "-j", "ACCEPT");
    b.appendVersioned(c.hostIPv4LoopbackCidr, V6_LOOPBACK, "mangle", CHAIN.tproxy, (addr) => [
      "!",
      "-d",
      addr,
      "-p",
      "tcp",
      "-j",
      "TPROXY",
      "--tproxy-mark",
      `${c.inboundTProxyMark}/0xffffffff`,
      "--on-port",
      c.inboundCapturePort,
    ]);
  }
  b.append(table, "PREROUTING", "-p", "tcp", "-j", CHAIN.inbound);
  if (include === "*") {
    for (const port of c.inboundPortsExclude) {
      b.append(table, CHAIN.inbound, "-p", "tcp", "--dport", port, "-j", "RETURN");
    }
    if (c.tproxy) {
      b.append("mangle", CHAIN.inbound, "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", CHAIN.divert);
      b.append("mangle", CHAIN.inbound, "-p", "tcp", "-j", CHAIN.tproxy);
    } else {
      b.append("nat", CHAIN.inbound, "-p", "tcp", "-j", CHAIN.inRedirect);
    }
    return;
  }
  for (const port of include) {
    if (c.tproxy) {
      b.append("mangle", CHAIN.inbound, "-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", CHAIN.divert);
      b.append("mangle", CHAIN.inbound, "-p", "tcp", "--dport", port, "-j", CHAIN.tproxy);
    } else {
      b.append("nat", CHAIN.inbound, "-p", "tcp", "--dport", port, "-j", CHAIN.inRedirect);
    }
  }
}

function ownerGroupRules(b: RuleBuilder, c: CaptureConfig): void {
  if (c.ownerGroupsInclude === "*") {
    for (const group of c.ownerGroupsExclude) {
      b.append("nat", CHAIN.output, "-m", "owner", "--gid-owner", group, "-j", "RETURN");
    }
    return;
  }
  // Only the listed groups are captured: everything else returns. (An empty list returns all.)
  const noneOf = c.ownerGroupsInclude.flatMap((g) => ["-m", "owner", "!", "--gid-owner", g]);
  b.append("nat", CHAIN.output, ...noneOf, "-j", "RETURN");
}

function dnsRules(b: RuleBuilder, c: CaptureConfig): void {
  const all = c.captureAllDNS;
  const v4 = c.dnsServersV4;
  const v6 = c.dnsServersV6;
  b.append("raw", "OUTPUT", "-j", CHAIN.outputDns);
  if (all || v4.length > 0) b.appendV4("nat", CHAIN.output, "-j", CHAIN.outputDns);
  if (all || v6.length > 0) b.appendV6("nat", CHAIN.output, "-j", CHAIN.outputDns);

  // Istio spells the TCP rule `--to-ports` and the UDP rule `--to-port`; both are accepted.
  for (const [proto, toPort] of [
    ["tcp", "--to-ports"],
    ["udp", "--to-port"],
  ] as const) {
    if (all) {
      b.append("nat", CHAIN.outputDns, "-p", proto, "--dport", "53", "-j", "REDIRECT", toPort, DNS_PROXY_PORT);
      continue;
    }
    for (const s of v4) b.appendV4("nat", CHAIN.outputDns, "-p", proto, "--dport", "53", "-d", `${s}/32`, "-j", "REDIRECT", toPort, DNS_PROXY_PORT);
    for (const s of v6) b.appendV6("nat", CHAIN.outputDns, "-p", proto, "--dport", "53", "-d", `${s}/128`, "-j", "REDIRECT", toPort, DNS_PROXY_PORT);
  }

  // Separate conntrack zones for proxy↔upstream (1) and client↔proxy (2) DNS flows.
  for (const [ids, match] of [
    [c.proxyUID, "--uid-owner"],
    [c.proxyGID, "--gid-owner"],
  ] as const) {
    for (const id of ids) {
      b.append("raw", CHAIN.outputDns, "-p", "udp", "--dport", "53", "-m", "owner", match, id, "-j", "CT", "--zone", "1");
      b.append("raw", CHAIN.outputDns, "-p", "udp", "--sport", DNS_PROXY_PORT, "-m", "owner", match, id, "-j", "CT", "--zone", "2");
    }
  }
  if (all) {
    b.append("raw", "PREROUTING", "-j", CHAIN.inbound);
    b.append("raw", CHAIN.outputDns, "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2");
    b.append("raw", CHAIN.inbound, "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1");
    return;
  }
  if (v4.length > 0) b.appendV4("raw", "PREROUTING", "-j", CHAIN.inbound);
  for (const s of v4) {
    b.appendV4("raw", CHAIN.outputDns, "-p", "udp", "--dport", "53", "-d", `${s}/32`, "-j", "CT", "--zone", "2");
    b.appendV4("raw", CHAIN.inbound, "-p", "udp", "--sport", "53", "-s", `${s}/32`, "-j", "CT", "--zone", "1");
  }
  if (v6.length > 0) b.appendV6("raw", "PREROUTING", "-j", CHAIN.inbound);
  for (const s of v6) {
    b.appendV6("raw", CHAIN.outputDns, "-p", "udp", "--dport", "53", "-d", `${s}/128`, "-j", "CT", "--zone", "2");
    b.appendV6("raw", CHAIN.inbound, "-p", "udp", "--sport", "53", "-s", `${s}/128`, "-j", "CT", "--zone", "1");
  }
}

function outboundIncludeRules(b: RuleBuilder, c: CaptureConfig, family: Family): void {
  const append = (...args: string[]): void => {
    if (family === 4) b.appendV4("nat", CHAIN.output, ...args);
    else b.appendV6("nat", CHAIN.output, ...args);
  };
  const insertPrerouting = (...args: string[]): void => {
    if (family === 4) b.insertV4("nat", "PREROUTING", 1, ...args);
    else b.insertV6("nat", "PREROUTING", 1, ...args);
  };
  const include = c.outboundIPRangesInclude;
  if (include === "*") {
    append("-j", CHAIN.redirect);
    for (const iface of c.rerouteVirtualInterfaces) insertPrerouting("-i", iface, "-j", CHAIN.redirect);
    return;
  }
  const ranges: Cidr[] = include.filter((r) => r.family === family);
  for (const r of ranges) {
    for (const iface of c.rerouteVirtualInterfaces) insertPrerouting("-i", iface, "-d", r.text, "-j", CHAIN.redirect);
    append("-d", r.text, "-j", CHAIN.redirect);
  }
}

function tproxyMarkRules(b: RuleBuilder, c: CaptureConfig): void {
  const mark = c.inboundTProxyMark;
  // Keep the mark Envoy's original_src listener sets, as a connection mark.
  b.append("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark");
  b.append("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN");
  for (const [ids, match] of [
    [c.proxyUID, "--uid-owner"],
    [c.proxyGID, "--gid-owner"],
  ] as const) {
    for (const id of ids) {
      b.appendVersioned(c.hostIPv4LoopbackCidr, V6_LOOPBACK, "mangle", "OUTPUT", (addr) => [
        "!",
        "-d",
        addr,
        "-p",
        "tcp",
        "-o",
        "lo",
        "-m",
        "owner",
        match,
        id,
        "-j",
        "MARK",
        "--set-mark",
        OUTBOUND_MARK,
      ]);
    }
  }
  b.append("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark");
  b.insert("mangle", CHAIN.inbound, 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN");
  b.insertV4("mangle", CHAIN.inbound, 2, "-p", "tcp", "-s", V4_PASSTHROUGH_SOURCE, "-i", "lo", "-j", "RETURN");
  b.insertV6("mangle", CHAIN.inbound, 2, "-p", "tcp", "-s", V6_PASSTHROUGH_SOURCE, "-i", "lo", "-j", "RETURN");
  b.insert("mangle", CHAIN.inbound, 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK, "-j", "RETURN");
}
