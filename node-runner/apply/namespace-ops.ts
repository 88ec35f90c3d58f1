// Everything an apply engine does to a network namespace, as one small interface (Istio's
// `Dependencies` plays this part for istio-iptables): read and replace iptables rules, list and
// replace nftables tables, show and change addresses, rules and routes. The engines decide;
// these run. `commandOps` runs them as commands through a NetnsRunner (the command helper in
// production, nsenter in tests, a recorded transcript without root).
import type { IptablesVariant } from "./records.ts";
import { commandError, type NetnsRunner, type NetnsTarget } from "./commands.ts";
import type { Family } from "../rules/istio.ts";

export interface NamespaceOps {
  /** iptables-save of one family, in the given variant. */
  iptablesSave(variant: IptablesVariant, family: Family): Promise<string>;
  /** One `iptables-restore --noflush` transaction (waiting for the xtables lock: the helper's deadline ends a wait). */
  iptablesRestore(variant: IptablesVariant, family: Family, input: string): Promise<void>;
  /** `nft -s list tables inet`, or one inet table (stateless: no counters). */
  nftList(table?: string): Promise<string>;
  /** One `nft -f` transaction. */
  nftApply(script: string): Promise<void>;
  /** `ip -j <args>`: a JSON listing of addresses, rules or routes. */
  ipShow(args: readonly string[]): Promise<string>;
  /** `ip <args>`: one change. */
  ip(args: readonly string[]): Promise<void>;
}

function tool(variant: IptablesVariant, family: Family, op: "save" | "restore"): string {
  return `${family === 4 ? "iptables" : "ip6tables"}-${variant.slice("iptables-".length)}-${op}`;
}

export function commandOps(run: NetnsRunner, netns: NetnsTarget): NamespaceOps {
  const must = async (what: string, argv: readonly string[], input?: string): Promise<string> => {
    const r = await run(netns, argv, input);
    if (r.code !== 0) throw commandError(what, r);
    return r.stdout;
  };
  return {
    iptablesSave: (variant, family) => must(tool(variant, family, "save"), [tool(variant, family, "save")]),
    // `-w`: the xtables lock (legacy; nft ignores it) is waited for, so that a busy lock is never
    // an exit status 4 that reads like a rule the kernel refused.
    iptablesRestore: async (variant, family, input) => {
      await must(tool(variant, family, "restore"), [tool(variant, family, "restore"), "--noflush", "-w"], input);
    },
    nftList: (table) =>
      table === undefined
        ? must("nft list tables", ["nft", "-s", "list", "tables", "inet"])
        : must(`nft list table ${table}`, ["nft", "-s", "list", "table", "inet", table]),
    nftApply: async (script) => {
      await must("nft -f", ["nft", "-f", "-"], script);
    },
    ipShow: (args) => must(`ip -j ${args.join(" ")}`, ["ip", "-j", ...args]),
    ip: async (args) => {
      await must(`ip ${args.join(" ")}`, ["ip", ...args]);
    },
  };
}
