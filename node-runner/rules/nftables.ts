// Capture config → one `nft -f` transaction, rule for rule what Istio's native nftables
// backend (tools/istio-nftables) generates. IPv4 and IPv6 share each `inet` table. Pure.
import { effectiveRedirectDNS, includesLoopback, type CaptureConfig } from "../../contract/capture-config.ts";
import { DNS_PROXY_PORT, NFT_TABLE, OUTBOUND_MARK, type NftTable } from "./istio.ts";

const CHAIN = {
  prerouting: "prerouting",
  output: "output",
  inbound: "istio-inbound",
  redirect: "istio-redirect",
  inRedirect: "istio-in-redirect",
  istioOutput: "istio-output",
  outputDns: "istio-output-dns",
  divert: "istio-divert",
  tproxy: "istio-tproxy",
  drop: "istio-drop",
} as const;

interface ChainSpec {
  readonly name: string;
  /** Base-chain hook declaration, e.g. `{ type nat hook output priority -100 ; }`. */
  readonly hook?: string;
}

// Declaration order per table; only chains that receive rules are declared.
const TABLE_CHAINS: Record<NftTable, readonly ChainSpec[]> = {
  nat: [
    { name: CHAIN.prerouting, hook: "{ type nat hook prerouting priority -100 ; }" },
    { name: CHAIN.output, hook: "{ type nat hook output priority -100 ; }" },
    { name: CHAIN.inbound },
    { name: CHAIN.redirect },
    { name: CHAIN.inRedirect },
    { name: CHAIN.istioOutput },
    { name: CHAIN.outputDns },
  ],
  mangle: [
    { name: CHAIN.prerouting, hook: "{ type filter hook prerouting priority -150 ; }" },
    { name: CHAIN.output, hook: "{ type route hook output priority -150 ; }" },
    { name: CHAIN.divert },
    { name: CHAIN.tproxy },
    { name: CHAIN.inbound },
    { name: CHAIN.drop },
  ],
  raw: [
    { name: CHAIN.prerouting, hook: "{ type filter hook prerouting priority -300 ; }" },
    { name: CHAIN.output, hook: "{ type filter hook output priority -300 ; }" },
    { name: CHAIN.inbound },
    { name: CHAIN.outputDns },
  ],
};

export interface NftRule {
  readonly table: NftTable;
  readonly chain: string;
  /** nft rule index for `insert`; absent for `add`. */
  readonly index?: number;
  /** Matches (and non-terminal statements) before the counter. */
  readonly match: readonly string[];
  /** The statement or verdict after the counter. */
  readonly action: readonly string[];
}

export interface NftPlan {
  readonly rules: readonly NftRule[];
  /** Input for `nft -f`: one transaction that (re)creates the Istio tables. */
  readonly script: string;
}

class NftRuleBuilder {
  readonly rules: NftRule[] = [];
  constructor(private readonly ipv6: boolean) {}
  add(table: NftTable, chain: string, match: string[], action: string[]): void {
    this.rules.push({ table, chain, match, action });
  }
  addV6(table: NftTable, chain: string, match: string[], action: string[]): void {
    if (this.ipv6) this.add(table, chain, match, action);
  }
  insert(table: NftTable, chain: string, index: number, match: string[], action: string[]): void {
    this.rules.push({ table, chain, index, match, action });
  }
  insertV6(table: NftTable, chain: string, index: number, match: string[], action: string[]): void {
    if (this.ipv6) this.insert(table, chain, index, match, action);
  }
}

const V6_LOOPBACK = "::1/128";

export function renderNftables(c: CaptureConfig): NftPlan {
  const b = new NftRuleBuilder(c.enableIPv6);
  const redirectDNS = effectiveRedirectDNS(c);
  const loopbackIncluded = includesLoopback(c);
  const hostLoopback = c.hostIPv4LoopbackCidr;
  const ret = ["return"];

  for (const iface of c.excludeInterfaces) {
    b.add("nat", CHAIN.prerouting, ["iifname", iface], ret);
    b.add("nat", CHAIN.output, ["oifname", iface], ret);
  }
  if (c.tproxy) {
    for (const iface of c.excludeInterfaces) {
      b.add("mangle", CHAIN.prerouting, ["iifname", iface], ret);
      b.add("mangle", CHAIN.output, ["oifname", iface], ret);
    }
  }
  for (const iface of c.rerouteVirtualInterfaces) {
    b.insert("nat", CHAIN.prerouting, 0, ["iifname", iface], ret);
  }
  if (c.dropInvalid) {
    b.add("mangle", CHAIN.prerouting, ["meta l4proto tcp", "ct state", "invalid"], ["jump", CHAIN.drop]);
    b.add("mangle", CHAIN.drop, [], ["drop"]);
  }

  b.add("nat", CHAIN.inbound, ["meta l4proto tcp", "tcp dport", c.inboundTunnelPort], ret);
  b.add("nat", CHAIN.redirect, ["meta l4proto tcp"], ["redirect to", `:${c.proxyPort}`]);
  b.add("nat", CHAIN.inRedirect, ["meta l4proto tcp"], ["redirect to", `:${c.inboundCapturePort}`]);

  inboundRules(b, c);

  b.add("nat", CHAIN.output, [], ["jump", CHAIN.istioOutput]);
  for (const port of c.outboundPortsExclude) {
    b.add("nat", CHAIN.istioOutput, ["tcp dport", port], ret);
    b.add("nat", CHAIN.istioOutput, ["udp dport", port], ret);
  }
  b.add("nat", CHAIN.istioOutput, ["oifname", "lo", "ip saddr", "127.0.0.6/32"], ret);
  b.addV6("nat", CHAIN.istioOutput, ["oifname", "lo", "ip6 saddr", "::6/128"], ret);

  for (const [ids, key] of [
    [c.proxyUID, "skuid"],
    [c.proxyGID, "skgid"],
  ] as const) {
    for (const id of ids) {
      const ports = redirectDNS && key === "skuid" ? `{ 53, ${c.inboundTunnelPort} }` : c.inboundTunnelPort;
      const toInbound = ["jump", CHAIN.inRedirect];
      b.add("nat", CHAIN.istioOutput, ["oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", hostLoopback, "tcp dport", "!=", ports, key, id], toInbound);
      b.addV6("nat", CHAIN.istioOutput, ["oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=", V6_LOOPBACK, "tcp dport", "!=", ports, key, id], toInbound);
      if (!loopbackIncluded) {
        const match = redirectDNS ? ["oifname", "lo", "meta l4proto tcp", "tcp dport", "!=", "53", key, "!=", id] : ["oifname", "lo", key, "!=", id];
        b.add("nat", CHAIN.istioOutput, match, ret);
      }
      b.add("nat", CHAIN.istioOutput, [key, id], ret);
    }
  }

  if (c.ownerGroupsInclude === "*") {
    for (const group of c.ownerGroupsExclude) b.add("nat", CHAIN.istioOutput, ["skgid", group], ret);
  } else {
    b.add(
      "nat",
      CHAIN.istioOutput,
      c.ownerGroupsInclude.flatMap((g) => ["skgid", "!=", g]),
      ret,
    );
  }

  if (redirectDNS) dnsRules(b, c);

  b.add("nat", CHAIN.istioOutput, ["ip daddr", hostLoopback], ret);
  b.addV6("nat", CHAIN.istioOutput, ["ip6 daddr", V6_LOOPBACK], ret);
  for (const r of c.outboundIPRangesExclude) {
    if (r.family === 4) b.add("nat", CHAIN.istioOutput, ["ip daddr", r.text], ret);
  }
  for (const r of c.outboundIPRangesExclude) {
    if (r.family === 6) b.addV6("nat", CHAIN.istioOutput, ["ip6 daddr", r.text], ret);
  }
  for (const port of c.outboundPortsInclude) {
    b.add("nat", CHAIN.istioOutput, ["tcp dport", port], ["jump", CHAIN.redirect]);
  }
  outboundIncludeRules(b, c);

  if (c.tproxy) tproxyMarkRules(b, c);

  return { rules: b.rules, script: transaction(b.rules) };
}

function inboundRules(b: NftRuleBuilder, c: CaptureConfig): void {
  const include = c.inboundPortsInclude;
  if (include === null) return;
  const table: NftTable = c.tproxy ? "mangle" : "nat";
  if (c.tproxy) {
    b.add("mangle", CHAIN.divert, [], ["meta mark set", c.inboundTProxyMark]);
    b.add("mangle", CHAIN.divert, [], ["accept"]);
    const to = `:${c.inboundCapturePort}`;
    const mark = ["meta mark set", c.inboundTProxyMark];
    b.add("mangle", CHAIN.tproxy, ["meta l4proto tcp", "ip daddr", "!=", c.hostIPv4LoopbackCidr, "tproxy ip to", to, ...mark], ["accept"]);
    b.addV6("mangle", CHAIN.tproxy, ["meta l4proto tcp", "ip6 daddr", "!=", V6_LOOPBACK, "tproxy ip6 to", to, ...mark], ["accept"]);
  }
  b.add(table, CHAIN.prerouting, ["meta l4proto tcp"], ["jump", CHAIN.inbound]);
  if (include === "*") {
    for (const port of c.inboundPortsExclude) b.add(table, CHAIN.inbound, ["meta l4proto tcp", "tcp dport", port], ["return"]);
    if (c.tproxy) {
      b.add("mangle", CHAIN.inbound, ["meta l4proto tcp", "ct state", "related,established"], ["jump", CHAIN.divert]);
      b.add("mangle", CHAIN.inbound, ["meta l4proto tcp"], ["jump", CHAIN.tproxy]);
    } else {
      b.add("nat", CHAIN.inbound, ["meta l4proto tcp"], ["jump", CHAIN.inRedirect]);
    }
    return;
  }
  for (const port of include) {
    if (c.tproxy) {
      b.add("mangle", CHAIN.inbound, ["meta l4proto tcp", "ct state", "related,established", "tcp dport", port], ["jump", CHAIN.divert]);
      b.add("mangle", CHAIN.inbound, ["meta l4proto tcp", "tcp dport", port], ["jump", CHAIN.tproxy]);
    } else {
      b.add("nat", CHAIN.inbound, ["meta l4proto tcp", "tcp dport", port], ["jump", CHAIN.inRedirect]);
    }
  }
}

function dnsRules(b: NftRuleBuilder, c: CaptureConfig): void {
  const all = c.captureAllDNS;
  const v4 = c.dnsServersV4;
  const v6 = c.dnsServersV6;
  const toProxy = ["redirect", "to", `:${DNS_PROXY_PORT}`];
  b.add("raw", CHAIN.output, [], ["jump", CHAIN.outputDns]);
  b.add("nat", CHAIN.istioOutput, [], ["jump", CHAIN.outputDns]);
  if (all) {
    b.add("nat", CHAIN.outputDns, ["meta l4proto tcp", "tcp dport", "53"], toProxy);
    b.add("nat", CHAIN.outputDns, ["udp dport", "53"], toProxy);
  } else {
    for (const proto of ["tcp", "udp"]) {
      for (const s of v4) b.add("nat", CHAIN.outputDns, ["ip daddr", `${s}/32`, `${proto} dport`, "53"], toProxy);
      for (const s of v6) b.addV6("nat", CHAIN.outputDns, ["ip6 daddr", `${s}/128`, `${proto} dport`, "53"], toProxy);
    }
  }
  for (const [ids, key] of [
    [c.proxyUID, "skuid"],
    [c.proxyGID, "skgid"],
  ] as const) {
    for (const id of ids) {
      b.add("raw", CHAIN.outputDns, ["udp dport", "53", "meta", key, id], ["ct", "zone", "set", "1"]);
      b.add("raw", CHAIN.outputDns, ["udp sport", DNS_PROXY_PORT, "meta", key, id], ["ct", "zone", "set", "2"]);
    }
  }
  if (all) {
    b.add("raw", CHAIN.prerouting, [], ["jump", CHAIN.inbound]);
    b.add("raw", CHAIN.outputDns, ["udp dport", "53"], ["ct", "zone", "set", "2"]);
    b.add("raw", CHAIN.inbound, ["udp sport", "53"], ["ct", "zone", "set", "1"]);
    return;
  }
  b.add("raw", CHAIN.prerouting, [], ["jump", CHAIN.inbound]);
  for (const s of v4) {
    b.add("raw", CHAIN.outputDns, ["udp dport", "53", "ip daddr", `${s}/32`], ["ct", "zone", "set", "2"]);
    b.add("raw", CHAIN.inbound, ["udp sport", "53", "ip saddr", `${s}/32`], ["ct", "zone", "set", "1"]);
  }
  for (const s of v6) {
    b.addV6("raw", CHAIN.outputDns, ["udp dport", "53", "ip6 daddr", `${s}/128`], ["ct", "zone", "set", "2"]);
    b.addV6("raw", CHAIN.inbound, ["udp sport", "53", "ip6 saddr", `${s}/128`], ["ct", "zone", "set", "1"]);
  }
}

function outboundIncludeRules(b: NftRuleBuilder, c: CaptureConfig): void {
  const toRedirect = ["jump", CHAIN.redirect];
  const include = c.outboundIPRangesInclude;
  if (include === "*") {
    b.add("nat", CHAIN.istioOutput, [], toRedirect);
    for (const iface of c.rerouteVirtualInterfaces) b.insert("nat", CHAIN.prerouting, 0, ["iifname", iface], toRedirect);
    return;
  }
  for (const r of include) {
    if (r.family !== 4) continue;
    for (const iface of c.rerouteVirtualInterfaces) b.insert("nat", CHAIN.prerouting, 0, ["iifname", iface, "ip daddr", r.text], toRedirect);
    b.add("nat", CHAIN.istioOutput, ["ip daddr", r.text], toRedirect);
  }
  for (const r of include) {
    if (r.family !== 6) continue;
    for (const iface of c.rerouteVirtualInterfaces) b.insertV6("nat", CHAIN.prerouting, 0, ["iifname", iface, "ip6 daddr", r.text], toRedirect);
    b.addV6("nat", CHAIN.istioOutput, ["ip6 daddr", r.text], toRedirect);
  }
}

function tproxyMarkRules(b: NftRuleBuilder, c: CaptureConfig): void {
  const mark = c.inboundTProxyMark;
  b.add("mangle", CHAIN.prerouting, ["meta l4proto tcp", "mark", mark], ["ct mark set mark"]);
  b.add("mangle", CHAIN.output, ["oifname", "lo", "meta l4proto tcp", "mark", mark], ["return"]);
  for (const [ids, key] of [
    [c.proxyUID, "skuid"],
    [c.proxyGID, "skgid"],
  ] as const) {
    for (const id of ids) {
      b.add("mangle", CHAIN.output, ["oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", c.hostIPv4LoopbackCidr, key, id], ["meta mark set", OUTBOUND_MARK]);
      b.addV6("mangle", CHAIN.output, ["oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=", V6_LOOPBACK, key, id], ["meta mark set", OUTBOUND_MARK]);
    }
  }
  b.add("mangle", CHAIN.output, ["meta l4proto tcp", "ct", "mark", mark], ["meta mark set", "ct", "mark"]);
  b.insert("mangle", CHAIN.inbound, 0, ["meta l4proto tcp", "mark", mark], ["return"]);
  b.insert("mangle", CHAIN.inbound, 1, ["iifname", "lo", "meta l4proto tcp", "ip saddr", "127.0.0.6/32"], ["return"]);
  b.insertV6("mangle", CHAIN.inbound, 1, ["iifname", "lo", "meta l4proto tcp", "ip6 saddr", "::6/128"], ["return"]);
  b.insert("mangle", CHAIN.inbound, 2, ["iifname", "lo", "meta l4proto tcp", "mark", "!=", OUTBOUND_MARK], ["return"]);
}

/**
 * The transaction, table by table (nat, mangle, raw; tables without rules left out): add and
 * flush the table, declare its chains that have rules, then add or insert the rules. An insert
 * at or past the end of its chain becomes an add: nft refuses an index that does not exist yet
 * (index 0 of an empty chain).
 */
export function transaction(rules: readonly NftRule[]): string {
  const lines: string[] = [];
  for (const table of Object.keys(NFT_TABLE) as NftTable[]) {
    const inTable = rules.filter((r) => r.table === table);
    if (inTable.length === 0) continue;
    const name = NFT_TABLE[table];
    lines.push(`add table inet ${name}`, `flush table inet ${name}`);
    for (const chain of TABLE_CHAINS[table]) {
      if (!inTable.some((r) => r.chain === chain.name)) continue;
      lines.push(`add chain inet ${name} ${chain.name}${chain.hook === undefined ? "" : ` ${chain.hook}`}`);
    }
    const count = new Map<string, number>();
    for (const r of inTable) {
      const body = [...r.match, "counter", ...r.action].join(" ");
      const seen = count.get(r.chain) ?? 0;
      lines.push(
        r.index === undefined || r.index >= seen ? `add rule inet ${name} ${r.chain} ${body}` : `insert rule inet ${name} ${r.chain} index ${r.index} ${body}`,
      );
      count.set(r.chain, seen + 1);
    }
  }
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}
