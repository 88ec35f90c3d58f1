// Network setup beside the firewall rules, as data: the loopback address IPv6 capture relies
// on, and the policy routing TPROXY needs so that marked packets are delivered locally to
// Envoy. Mirrors istio-iptables' ConfigureRoutes. Pure; the node-runner executes the steps.
import type { CaptureConfig } from "../../contract/capture-config.ts";
import type { Family } from "./istio.ts";

export type NetSetupStep =
  /** Envoy's inbound passthrough binds ::6 (127.0.0.6 needs nothing: 127/8 is all loopback). */
  | { readonly kind: "address"; readonly family: 6; readonly address: "::6/128"; readonly device: "lo" }
  /** Packets carrying the TPROXY mark look up the TPROXY routing table. */
  | { readonly kind: "rule"; readonly family: Family; readonly fwmark: string; readonly table: string }
  /** That table delivers everything locally, via lo. */
  | { readonly kind: "route"; readonly family: Family; readonly table: string; readonly device: "lo" };

export function netSetupSteps(c: CaptureConfig): NetSetupStep[] {
  const steps: NetSetupStep[] = [];
  if (c.enableIPv6) steps.push({ kind: "address", family: 6, address: "::6/128", device: "lo" });
  if (c.tproxy && c.inboundPortsInclude !== null) {
    const families: Family[] = c.enableIPv6 ? [4, 6] : [4];
    for (const family of families) {
      steps.push({ kind: "rule", family, fwmark: c.inboundTProxyMark, table: c.inboundTProxyRouteTable });
      steps.push({ kind: "route", family, table: c.inboundTProxyRouteTable, device: "lo" });
    }
  }
  return steps;
}

/** The `ip` arguments that perform a step (`add`) or undo it (`del`). */
export function ipCommand(step: NetSetupStep, op: "add" | "del"): string[] {
  switch (step.kind) {
    case "address":
      return ["-6", "addr", op, step.address, "dev", step.device];
    case "rule":
      return [`-${step.family}`, "rule", op, "fwmark", step.fwmark, "lookup", step.table];
    case "route":
      return [`-${step.family}`, "route", op, "local", "default", "dev", step.device, "table", step.table];
  }
}
