// The rules of a plan as iptables-save prints them once installed, learned once per plan and
// reused, so that an apply needs no save after its restore.
import { createHash } from "node:crypto";
import { BoundedMap } from "../../lib/bounded-map.ts";
import { ruleLine, type ChainRules } from "../rules/iptables-text.ts";
import type { Family, IptablesRule } from "../rules/istio.ts";
import type { IptablesVariant } from "./records.ts";

/**
 * A plan's rules as iptables-save prints them once installed (its own normal form: `-p tcp`
 * gains `-m tcp`, addresses their prefix length, ...), learned from the save after the first
 * apply of that plan and reused by the next ones, which then need no save after their restore.
 * Per tool and address family; plans naming owner users or groups by name are not kept (the
 * tool prints the number the node resolves them to, which may change). Bounded: the oldest
 * plan is forgotten first.
 */
export class SavedFormCache {
  private readonly forms: BoundedMap<string, ChainRules>;
  constructor(limit = 256) {
    this.forms = new BoundedMap(limit);
  }

  private static key(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[]): string {
    return createHash("sha256")
      .update(`${variant}\n${family}\n${rules.map(ruleLine).join("\n")}`)
      .digest("hex");
  }

  get(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[]): ChainRules | undefined {
    return this.forms.get(SavedFormCache.key(variant, family, rules));
  }

  /** Keep `saved` as the plan's form if it has exactly the plan's rules, chain by chain. */
  learn(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[], saved: ChainRules): void {
    if (rules.some((r) => r.args.some((arg, i) => /^--(uid|gid)-owner$/.test(r.args[i - 1] ?? "") && !/^\d+(-\d+)?$/.test(arg)))) return;
    const planned = new Map<string, number>();
    for (const r of rules) planned.set(`${r.table} ${r.chain}`, (planned.get(`${r.table} ${r.chain}`) ?? 0) + 1);
    const found = Object.entries(saved).flatMap(([table, chains]) =>
      Object.entries(chains)
        .filter(([, specs]) => specs.length > 0)
        .map(([chain, specs]) => [`${table} ${chain}`, specs.length] as const),
    );
    if (found.length !== planned.size || found.some(([chain, n]) => planned.get(chain) !== n)) return;
    const key = SavedFormCache.key(variant, family, rules);
    this.forms.set(key, saved);
  }

  /** A learned form that did not match what the tool printed later: learn it again. */
  forget(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[]): void {
    this.forms.delete(SavedFormCache.key(variant, family, rules));
  }
}
