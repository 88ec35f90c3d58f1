// iptables text, both ways (docs/architecture.md §7): rules as iptables-restore lines, Istio's
// restore form of a plan, iptables-save output parsed, what the node-runner owns in it, and the
// single iptables-restore transaction that replaces or removes that. Pure: text and rules in,
// text out.
//
// Owned: every ISTIO_* chain with its rules, plus the lines in built-in chains that the
// previous apply added (recorded by the node-runner) or that jump to an ISTIO_* chain.
// Anything else in the namespace belongs to someone else and is left alone.
import type { IptablesRule, Table } from "./istio.ts";

export const MANAGED_TABLES: readonly Table[] = ["mangle", "nat", "raw"];
const BUILTIN_CHAINS = new Set(["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]);
/** Targets that are not chains to declare. */
const BUILTIN_TARGETS = new Set([...BUILTIN_CHAINS, "ACCEPT", "DROP", "RETURN"]);
const OWN_CHAIN = /^ISTIO_[A-Z_]+$/;

/** table → chain → rule specs (iptables-save form, without the leading "-A <chain>"). */
export type ChainRules = Record<string, Record<string, string[]>>;

export interface SaveState {
  /** Declared chains per table (built-in and user-defined). */
  readonly chains: Record<string, string[]>;
  readonly rules: ChainRules;
}

/** Parse iptables-save output. */
export function parseSave(text: string): SaveState {
  const chains: Record<string, string[]> = {};
  const rules: ChainRules = {};
  let table: string | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("*")) {
      table = line.slice(1).trim();
      chains[table] = [];
      rules[table] = {};
    } else if (table !== undefined && line.startsWith(":")) {
      const chain = line.slice(1).split(" ")[0] ?? "";
      chains[table]?.push(chain);
      (rules[table] as Record<string, string[]>)[chain] ??= [];
    } else if (table !== undefined && line.startsWith("-A ")) {
      const rest = line.slice(3);
      const space = rest.indexOf(" ");
      const chain = space < 0 ? rest : rest.slice(0, space);
      const spec = space < 0 ? "" : rest.slice(space + 1);
      ((rules[table] as Record<string, string[]>)[chain] ??= []).push(spec);
    }
  }
  return { chains, rules };
}

const jumpsToOwnChain = (spec: string): boolean => {
  const m = /(?:^| )-j (ISTIO_[A-Z_]+)(?: |$)/.exec(spec);
  return m !== null;
};

/**
 * The owned part of a save state. `recorded` holds the built-in-chain lines the last apply
 * added (if known); lines jumping to ISTIO_* chains are owned regardless.
 */
export function ownedRules(state: SaveState, recorded: ChainRules = {}): ChainRules {
  const owned: ChainRules = {};
  for (const table of MANAGED_TABLES) {
    const tableRules = state.rules[table] ?? {};
    const out: Record<string, string[]> = {};
    for (const [chain, specs] of Object.entries(tableRules)) {
      if (OWN_CHAIN.test(chain)) {
        out[chain] = [...specs];
      } else if (BUILTIN_CHAINS.has(chain)) {
        const remaining = [...(recorded[table]?.[chain] ?? [])];
        const mine = specs.filter((spec) => {
          const i = remaining.indexOf(spec);
          if (i >= 0) {
            remaining.splice(i, 1);
            return true;
          }
          return jumpsToOwnChain(spec);
        });
        if (mine.length > 0) out[chain] = mine;
      }
    }
    if (Object.keys(out).length > 0) owned[table] = out;
  }
  return owned;
}

/**
 * Every line these rules add to a built-in chain jumps to an ISTIO_* chain: ownership of all of
 * them is found again from the rules alone, with no record of what was added.
 */
export function builtinLinesSelfEvident(rules: readonly IptablesRule[]): boolean {
  return rules.every((r) => !BUILTIN_CHAINS.has(r.chain) || OWN_CHAIN.test(jumpTarget(r.args) ?? ""));
}

/** The built-in-chain lines of an owned set (what must be recorded to be found again). */
export function builtinLines(owned: ChainRules): ChainRules {
  const out: ChainRules = {};
  for (const [table, chains] of Object.entries(owned)) {
    for (const [chain, specs] of Object.entries(chains)) {
      if (BUILTIN_CHAINS.has(chain)) (out[table] ??= {})[chain] = [...specs];
    }
  }
  return out;
}

/** Lines added between two states in built-in chains (multiset difference, per chain). */
export function addedBuiltinLines(before: SaveState, after: SaveState): ChainRules {
  const out: ChainRules = {};
  for (const table of MANAGED_TABLES) {
    for (const chain of BUILTIN_CHAINS) {
      const remaining = [...(before.rules[table]?.[chain] ?? [])];
      const added = (after.rules[table]?.[chain] ?? []).filter((spec) => {
        const i = remaining.indexOf(spec);
        if (i < 0) return true;
        remaining.splice(i, 1);
        return false;
      });
      if (added.length > 0) (out[table] ??= {})[chain] = added;
    }
  }
  return out;
}

export function sameRules(a: ChainRules, b: ChainRules): boolean {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function sortKeys(rules: ChainRules): [string, [string, string[]][]][] {
  return Object.keys(rules)
    .sort()
    .map((t) => [
      t,
      Object.keys(rules[t] ?? {})
        .sort()
        .map((c) => [c, rules[t]?.[c] ?? []] as [string, string[]]),
    ]);
}

/**
 * One iptables-restore --noflush input that removes everything owned and, when `desired` is
 * given, installs it, table by table, each table committed at once: no window without rules.
 */
export function replaceTransaction(owned: ChainRules, desired: readonly IptablesRule[] | null): string {
  const tables = new Set<string>([...Object.keys(owned), ...(desired ?? []).map((r) => r.table)]);
  const lines: string[] = [];
  for (const table of [...tables].sort()) {
    const ownedChains = owned[table] ?? {};
    const wanted = (desired ?? []).filter((r) => r.table === table);
    const wantedChains = new Set(wanted.flatMap((r) => [r.chain, jumpTarget(r.args)]).filter((c): c is string => c !== undefined && OWN_CHAIN.test(c)));
    const existingChains = Object.keys(ownedChains).filter((c) => OWN_CHAIN.test(c));
    lines.push(`*${table}`);
    // Declaring a user chain in --noflush mode creates it, or empties it if it exists.
    for (const chain of new Set([...existingChains, ...wantedChains])) lines.push(`:${chain} - [0:0]`);
    for (const [chain, specs] of Object.entries(ownedChains)) {
      if (BUILTIN_CHAINS.has(chain)) for (const spec of specs) lines.push(`-D ${chain} ${spec}`);
    }
    for (const chain of existingChains) if (!wantedChains.has(chain)) lines.push(`-X ${chain}`);
    for (const rule of wanted) lines.push(ruleLine(rule));
    lines.push("COMMIT");
  }
  return `${lines.join("\n")}\n`;
}

function jumpTarget(args: readonly string[]): string | undefined {
  const i = args.lastIndexOf("-j");
  return i >= 0 && i === args.length - 2 ? args[i + 1] : undefined;
}

/**
 * One block per table (sorted by name): chain declarations (chains with rules in order of
 * first use, then chains only jumped to), then the rules in generation order.
 */
export function restoreText(rules: readonly IptablesRule[]): string {
  const tables = [...new Set(rules.map((r) => r.table))].sort();
  const lines: string[] = [];
  for (const table of tables) {
    const inTable = rules.filter((r) => r.table === table);
    const declared: string[] = [];
    const declare = (chain: string): void => {
      if (!BUILTIN_TARGETS.has(chain) && !declared.includes(chain)) declared.push(chain);
    };
    for (const r of inTable) declare(r.chain);
    for (const r of inTable) {
      const n = r.args.length;
      if (n >= 2 && r.args[n - 2] === "-j") declare(r.args[n - 1] as string);
    }
    lines.push(`* ${table}`, ...declared.map((chain) => `-N ${chain}`), ...inTable.map(ruleLine), "COMMIT");
  }
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}

export function ruleLine(r: IptablesRule): string {
  const head = r.position === undefined ? ["-A", r.chain] : ["-I", r.chain, String(r.position)];
  return [...head, ...r.args].join(" ");
}
