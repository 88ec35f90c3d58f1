// The iptables apply, decided (docs/architecture.md §7): from what the namespace holds (its
// saves, parsed), what the runner recorded there and the rules wanted, which transaction to
// apply per family, the intent to write first, and — once the transactions are in and the
// families whose saved form was not known have been saved again — the new record. Pure: data in,
// data out; iptables-engine.ts runs it against a namespace.
import { createHash } from "node:crypto";
import {
  addedBuiltinLines,
  builtinLines,
  builtinLinesSelfEvident,
  ownedRules,
  replaceTransaction,
  ruleLine,
  sameRules,
  type ChainRules,
  type SaveState,
} from "../rules/iptables-text.ts";
import type { IptablesFamilyPlan, IptablesPlan } from "../rules/iptables.ts";
import type { Family, IptablesRule } from "../rules/istio.ts";
import type { NetSetupStep } from "../rules/routes.ts";
import type { FamilyKey, IptablesRecord, IptablesVariant, NetnsRecord } from "./records.ts";

const familyKey = (family: Family): FamilyKey => (family === 4 ? "4" : "6");

/**
 * Short digest of what an apply installs (the rule lines of its transaction, per family, and
 * the link steps): the value of the `rules` annotation.
 */
export function rulesDigest(variant: IptablesVariant, families: readonly IptablesFamilyPlan[], steps: readonly NetSetupStep[]): string {
  const h = createHash("sha256").update(`${variant}\n`);
  for (const f of families) h.update(`v${f.family}\n${f.rules.map(ruleLine).join("\n")}\n`);
  h.update(JSON.stringify(steps));
  return h.digest("hex").slice(0, 16);
}

/** The record an apply may build on: this pod's, written by the same variant. */
export function usableRecord(record: NetnsRecord | undefined, podUid: string, variant: IptablesVariant): IptablesRecord | undefined {
  return record !== undefined && record.podUid === podUid && record.variant === variant ? record : undefined;
}

/** The families whose rules must be read before deciding: v4 always, v6 when wanted or once owned. */
export function familiesToRead(desired: IptablesPlan, record: IptablesRecord | undefined): Family[] {
  return desired.v6 === null && record?.owned["6"] === undefined && record?.pending?.["6"] === undefined ? [4] : [4, 6];
}

export interface IptablesApplyInput {
  readonly variant: IptablesVariant;
  readonly podUid: string;
  readonly netnsInode: string;
  /** usableRecord(...) */
  readonly record: IptablesRecord | undefined;
  readonly desired: IptablesPlan;
  readonly steps: readonly NetSetupStep[];
  /** The families of familiesToRead(), parsed from their saves. */
  readonly before: ReadonlyMap<Family, SaveState>;
  /** A plan's rules in saved form, where learned (saved-forms.ts). */
  readonly savedForm: (family: Family, rules: readonly IptablesRule[]) => ChainRules | undefined;
}

export interface FamilyTransaction {
  readonly family: Family;
  /** The iptables-restore --noflush input: what is owned out, the wanted rules in. */
  readonly input: string;
  /** The rules wanted; null: the family's rules only go. */
  readonly rules: readonly IptablesRule[] | null;
  /** The rules as the save will print them, where known: no save after the restore. */
  readonly savedForm: ChainRules | undefined;
}

export type IptablesApplyPlan =
  | { readonly kind: "unchanged"; readonly digest: string }
  | {
      readonly kind: "apply";
      readonly digest: string;
      /** To record before any transaction (undefined: ownership is evident without one). */
      readonly intent: IptablesRecord | undefined;
      /** Families whose learned saved form did not hold: to forget. */
      readonly drifted: readonly Family[];
      /** In order; a family with a rule set and no saved form is saved right after its own. */
      readonly transactions: readonly FamilyTransaction[];
      /** The link steps in place before (the record's) and wanted. */
      readonly stepsBefore: readonly NetSetupStep[];
    };

/** Decide an apply. */
export function planIptablesApply(input: IptablesApplyInput): IptablesApplyPlan {
  const { desired, record, before } = input;
  const families = desired.v6 === null ? [desired.v4] : [desired.v4, desired.v6];
  const digest = rulesDigest(input.variant, families, input.steps);
  const ownedNow = ownedInFamilies(record, before);

  let drifted: Family[] = [];
  if (record?.digest === digest) {
    drifted = families.filter((f) => !sameRules(ownedNow(f.family), record.owned[familyKey(f.family)] ?? {})).map((f) => f.family);
    if (drifted.length === 0 && (desired.v6 !== null || Object.keys(ownedNow(6)).length === 0)) return { kind: "unchanged", digest };
  }

  // Intent first: a crash from here on leaves a record from which ownership is recovered. Not
  // needed when everything the apply adds is found again without one: built-in-chain lines that
  // all jump to ISTIO_* chains (Istio's default capture) and no link steps.
  let intent: IptablesRecord | undefined;
  if (!(input.steps.length === 0 && families.every((f) => builtinLinesSelfEvident(f.rules)))) {
    const pending: NonNullable<IptablesRecord["pending"]> = {};
    const carried: IptablesRecord["builtin"] = {};
    for (const [family, state] of before) {
      pending[familyKey(family)] = builtinLines(state.rules);
      const mine = ownedBuiltin(record, family, state);
      if (mine !== undefined) carried[familyKey(family)] = mine;
    }
    intent = {
      podUid: input.podUid,
      netnsInode: input.netnsInode,
      digest: "",
      variant: input.variant,
      builtin: carried,
      owned: record?.owned ?? {},
      netSetup: record?.netSetup ?? [],
      pending,
    };
  }

  const transactions: FamilyTransaction[] = [];
  for (const family of [4, 6] as const) {
    if (!before.has(family)) continue;
    const wanted = family === 4 ? desired.v4 : desired.v6;
    const current = ownedNow(family);
    if (wanted === null && Object.keys(current).length === 0) continue;
    const known = wanted === null || drifted.includes(family) ? undefined : input.savedForm(family, wanted.rules);
    transactions.push({ family, input: replaceTransaction(current, wanted?.rules ?? null), rules: wanted?.rules ?? null, savedForm: known });
  }
  return { kind: "apply", digest, intent, drifted, transactions, stepsBefore: record?.netSetup ?? [] };
}

/**
 * The record once the transactions are in: per family, what is owned now is the plan, in saved
 * form — known beforehand, or from `after` (the family saved again right after its transaction).
 * Also the saved forms learned.
 */
export function completeIptablesApply(
  input: Pick<IptablesApplyInput, "variant" | "podUid" | "netnsInode" | "record" | "before" | "steps">,
  plan: Extract<IptablesApplyPlan, { kind: "apply" }>,
  after: ReadonlyMap<Family, SaveState>,
): { record: IptablesRecord; learned: { family: Family; rules: readonly IptablesRule[]; saved: ChainRules }[] } {
  const ownedNow = ownedInFamilies(input.record, input.before);
  const builtin: IptablesRecord["builtin"] = {};
  const owned: IptablesRecord["owned"] = {};
  const learned: { family: Family; rules: readonly IptablesRule[]; saved: ChainRules }[] = [];
  for (const t of plan.transactions) {
    if (t.rules === null) continue;
    const key = familyKey(t.family);
    if (t.savedForm !== undefined) {
      owned[key] = t.savedForm;
      builtin[key] = builtinLines(t.savedForm);
      continue;
    }
    const before = input.before.get(t.family);
    const saved = after.get(t.family);
    if (before === undefined || saved === undefined) throw new Error(`no save of IPv${t.family} after its transaction`);
    // Built-in lines present now that were not there before, plus the ones replaced.
    builtin[key] = mergeRules(addedBuiltinLines(before, saved), builtinLines(ownedNow(t.family)), saved);
    owned[key] = ownedRules(saved, builtin[key]);
    learned.push({ family: t.family, rules: t.rules, saved: owned[key] });
  }
  return {
    record: { podUid: input.podUid, netnsInode: input.netnsInode, digest: plan.digest, variant: input.variant, builtin, owned, netSetup: input.steps },
    learned,
  };
}

/** The transactions that take out everything the runner owns, per family read (`states`). */
export function planIptablesRemove(record: IptablesRecord | undefined, states: ReadonlyMap<Family, SaveState>): FamilyTransaction[] {
  const transactions: FamilyTransaction[] = [];
  for (const [family, state] of states) {
    const current = ownedRules(state, ownedBuiltin(record, family, state));
    if (Object.keys(current).length > 0) transactions.push({ family, input: replaceTransaction(current, null), rules: null, savedForm: undefined });
  }
  return transactions;
}

/** What the runner owns in each family before it changes anything (memoised: asked up to three times). */
function ownedInFamilies(record: IptablesRecord | undefined, before: ReadonlyMap<Family, SaveState>): (family: Family) => ChainRules {
  const memo = new Map<Family, ChainRules>();
  return (family) => {
    let owned = memo.get(family);
    if (owned === undefined) {
      const state = before.get(family);
      owned = state === undefined ? {} : ownedRules(state, ownedBuiltin(record, family, state));
      memo.set(family, owned);
    }
    return owned;
  };
}

/**
 * The built-in-chain lines a record says this runner owns in `state`: as recorded, plus, when
 * an apply died between its intent and its record, every line added since the intent.
 */
function ownedBuiltin(record: IptablesRecord | undefined, family: Family, state: SaveState): ChainRules | undefined {
  const key = familyKey(family);
  const before = record?.pending?.[key];
  if (before === undefined) return record?.builtin[key];
  return mergeRules(record?.builtin[key] ?? {}, addedBuiltinLines({ chains: {}, rules: before }, state), state);
}

/** Union of built-in lines that still exist in `after`. */
function mergeRules(a: ChainRules, b: ChainRules, after: SaveState): ChainRules {
  const out: ChainRules = {};
  for (const source of [a, b]) {
    for (const [table, chains] of Object.entries(source)) {
      for (const [chain, specs] of Object.entries(chains)) {
        const present = after.rules[table]?.[chain] ?? [];
        const list = ((out[table] ??= {})[chain] ??= []);
        for (const spec of specs) if (present.includes(spec) && !list.includes(spec)) list.push(spec);
      }
    }
  }
  return out;
}
