// Which iptables variant a namespace uses, and the saves taken to find out: passed on to the
// apply as the state before it, so that nothing is saved twice in one request.
import type { Family } from "../rules/istio.ts";
import type { NamespaceOps } from "./namespace-ops.ts";
import type { IptablesVariant } from "./records.ts";

/** Saves of this request taken before anything changed, by variant and family ("" where a save would print nothing). */
export type EarlierSaves = Readonly<Partial<Record<IptablesVariant, Readonly<Partial<Record<Family, string>>>>>>;

/**
 * The variant holding rules in the namespace, else the node's default, with the saves read on
 * the way. The legacy save is skipped where the kernel shows no legacy table (`legacyTables`
 * false); a failing save counts as an empty one.
 */
export async function detectVariant(
  ops: NamespaceOps,
  nodeDefault: IptablesVariant,
  earlier: EarlierSaves,
  legacyTables: () => boolean | undefined,
): Promise<{ variant: IptablesVariant; saves: EarlierSaves }> {
  const saves: Partial<Record<IptablesVariant, Partial<Record<Family, string>>>> = { ...earlier };
  for (const variant of ["iptables-nft", "iptables-legacy"] as const) {
    if (variant === "iptables-legacy" && legacyTables() === false) break;
    let saved = saves[variant]?.[4];
    if (saved === undefined) {
      try {
        saved = await ops.iptablesSave(variant, 4);
        saves[variant] = { ...saves[variant], 4: saved };
      } catch {
        saved = "";
      }
    }
    if (/^-A /m.test(saved)) return { variant, saves };
  }
  return { variant: nodeDefault, saves };
}

/**
 * A namespace without any nftables table holds no iptables-nft rule: what iptables-nft-save and
 * ip6tables-nft-save would print there is nothing (`tables`: the command helper's listing,
 * undefined when it could not tell).
 */
export function savesOfEmptyNftTables(tables: readonly string[] | undefined): EarlierSaves {
  return tables?.length === 0 ? { "iptables-nft": { 4: "", 6: "" } } : {};
}
