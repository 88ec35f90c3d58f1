// Istio's names and numbers that the rules must reproduce exactly (istio-iptables' constants
// and istio-nftables' table names), and the rule type both iptables modules speak: one module,
// so that the renderers and the iptables text they produce import it and not each other.
import type { IpFamily } from "../../contract/tokens.ts";

export type Table = "filter" | "mangle" | "nat" | "raw";
export type Family = IpFamily;

export interface IptablesRule {
  readonly table: Table;
  readonly chain: string;
  /** Present for `-I <chain> <position>`; absent for `-A <chain>`. */
  readonly position?: number;
  readonly args: readonly string[];
}

/** istio-iptables' chains. */
export const CHAIN = {
  inbound: "ISTIO_INBOUND",
  redirect: "ISTIO_REDIRECT",
  inRedirect: "ISTIO_IN_REDIRECT",
  output: "ISTIO_OUTPUT",
  outputDns: "ISTIO_OUTPUT_DNS",
  divert: "ISTIO_DIVERT",
  tproxy: "ISTIO_TPROXY",
  drop: "ISTIO_DROP",
} as const;

/** istio-nftables' tables (all `inet`). */
export const NFT_TABLE = {
  nat: "istio-proxy-nat",
  mangle: "istio-proxy-mangle",
  raw: "istio-proxy-raw",
} as const;
export type NftTable = keyof typeof NFT_TABLE;

/** Mark Envoy's own inbound-bound packets carry in TPROXY mode (Istio's OutboundMark). */
export const OUTBOUND_MARK = "1338";
/** Port of the istio-agent DNS proxy. */
export const DNS_PROXY_PORT = "15053";
