// Program one pod's network namespace (docs/architecture.md §7): render, compare with what is there,
// and replace what differs in one iptables-restore transaction per address family, then the
// TPROXY / IPv6 network setup. Idempotent: the same rules already in place → "unchanged".
// Commands run inside the pod's netns only, entered by a file descriptor opened once per apply
// (a PID can be reused meanwhile; a descriptor keeps naming the same namespace), never the node's.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { BoundedMap } from "../lib/bounded-map.ts";
import type { CaptureConfig } from "../contract/capture-config.ts";
import { runInNetns, type CommandResult } from "./nsenter.ts";
import { addedBuiltinLines, builtinLines, builtinLinesSelfEvident, ownedRules, parseSave, replaceTransaction, ruleLine, sameRules, type ChainRules, type SaveState } from "./rules/iptables-text.ts";
import { renderIptables, type IptablesFamilyPlan } from "./rules/iptables.ts";
import type { Family, IptablesRule } from "./rules/istio.ts";
import { ipCommand, netSetupSteps, type NetSetupStep } from "./rules/routes.ts";

/** The iptables variants, named as the backends are (backends.ts). */
export type IptablesVariant = "iptables-nft" | "iptables-legacy";

export type { CommandResult } from "./nsenter.ts";

/** An open network namespace: a descriptor of /proc/<pid>/ns/net and its inode. */
export interface NetnsTarget {
  readonly fd: number;
  readonly inode: string;
  /**
   * Saves taken earlier in this request, before anything changed (the variant probe's), by
   * command: the engine's first save with the same tool uses one instead of running it again.
   */
  readonly earlierSaves?: Map<string, string>;
  /**
   * Whether legacy (x_tables) tables exist in the namespace, as the kernel says now; false lets
   * the variant probe skip iptables-legacy-save (no table, no rule).
   */
  legacyTables?(): boolean | undefined;
}

/** Runs a command inside a network namespace. The seam tests and the server share. */
export type NetnsRunner = (netns: NetnsTarget, argv: readonly string[], input?: string) => Promise<CommandResult>;

/** In this process: the namespace descriptor becomes the child's fd 3, which nsenter enters. */
export const nsenterRunner: NetnsRunner = (netns, argv, input) => runInNetns("/proc/self/fd/3", argv, input, netns.fd);

/**
 * A command in the namespace failed. `kind` says what the answer is: an owner group the node
 * cannot resolve is the config's fault (422); a namespace that went away is retryable; the
 * rest (a foreign rule holding an ISTIO_* chain, ...) is a conflict in the namespace.
 */
/**
 * What went wrong with a command of an apply, by kind (never by the command's wording): the
 * namespace is gone, the node cannot run it now (tool missing, out of time, the helper died),
 * or the tool refused its input. (iptables' exit status 4, "resource problem", is not a kind of
 * its own: it means the xtables lock and a chain still in use alike.)
 */
export type ApplyFailureKind = "netns-gone" | "node-unavailable" | "refused";

export class ApplyError extends Error {
  override name = "ApplyError";
  constructor(
    message: string,
    readonly kind: ApplyFailureKind = "refused",
  ) {
    super(message);
  }
}

/** The ApplyError for a command that did not succeed: its kind from how it ended, its message from its stderr. */
export function commandError(what: string, r: CommandResult): ApplyError {
  const detail = `${what} failed: ${r.stderr.trim()}`;
  if (r.failure === "netns-gone") return new ApplyError(detail, "netns-gone");
  if (r.failure !== undefined) return new ApplyError(`${detail} (${r.failure})`, "node-unavailable");
  return new ApplyError(detail, "refused");
}

/** Record files could not be written (a full or read-only state directory): nothing is known to be applied. */
export class StateError extends Error {
  override name = "StateError";
}

function tool(variant: IptablesVariant, family: Family, op: "save" | "restore"): string {
  return `${family === 4 ? "iptables" : "ip6tables"}-${variant.slice("iptables-".length)}-${op}`;
}

/** What the node-runner remembers about a namespace it programmed. */
export interface NetnsRecord {
  readonly podUid: string;
  readonly netnsInode: string;
  readonly digest: string;
  /** The backend that programmed it (backends.ts). */
  readonly variant: IptablesVariant | "nftables";
  /** nftables: hash of the Istio tables as listed after the apply (drift detection). */
  readonly nftListing?: string;
  /** Built-in-chain lines the apply added, per family. */
  readonly builtin: Partial<Record<"4" | "6", ChainRules>>;
  /** Complete owned rules after the apply, per family (for drift detection). */
  readonly owned: Partial<Record<"4" | "6", ChainRules>>;
  /**
   * Written before a restore and cleared after it: the built-in-chain lines as they were
   * before, per family. Found on the next apply (the runner died in between), every built-in
   * line added since then is owned, so nothing the crashed apply wrote is left behind.
   */
  readonly pending?: Partial<Record<"4" | "6", ChainRules>>;
  readonly netSetup: readonly NetSetupStep[];
}

/**
 * Records live beside the namespaces they describe (a tmpfs such as /run): both end at reboot.
 * This process is the only writer, so the store keeps the list of records in its directory
 * (read once) and the most recently used ones (a node's worth of pods, 110 by default): a new
 * pod's namespace is known to have none without a read, and an apply reads its record from
 * memory. The files are read and written synchronously: on a tmpfs each is a memory copy of a
 * few KB, where every asynchronous call is a round trip through libuv's thread pool (half a
 * millisecond per apply on a busy runner). Writes go through a temporary file and a rename.
 */
export class RecordStore {
  private readonly cache: BoundedMap<string, NetnsRecord | undefined>;
  private stored: Set<string> | undefined;
  constructor(
    private readonly dir: string,
    cacheLimit = 256,
  ) {
    this.cache = new BoundedMap(cacheLimit);
  }
  private file(inode: string): string {
    if (!/^\d+$/.test(inode)) throw new Error(`bad netns inode ${inode}`);
    return path.join(this.dir, `${inode}.json`);
  }
  /** The inodes that have a record file (the directory listed on first use). */
  private storedInodes(): Set<string> {
    if (this.stored === undefined) {
      let names: string[] = [];
      try {
        names = readdirSync(this.dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
      this.stored = new Set(names.flatMap((name) => /^(\d+)\.json$/.exec(name)?.[1] ?? []));
    }
    return this.stored;
  }
  get(inode: string): NetnsRecord | undefined {
    const file = this.file(inode);
    if (this.cache.has(inode)) return this.cache.get(inode);
    let record: NetnsRecord | undefined;
    if (this.storedInodes().has(inode)) {
      try {
        record = JSON.parse(readFileSync(file, "utf8")) as NetnsRecord;
      } catch {
        record = undefined;
      }
    }
    this.cache.set(inode, record);
    return record;
  }
  put(record: NetnsRecord): void {
    const file = this.file(record.netnsInode);
    const stored = this.storedInodes();
    this.cache.delete(record.netnsInode); // a failed write leaves the file to say what is there
    const text = JSON.stringify(record);
    try {
      try {
        writeFileSync(`${file}.tmp`, text);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        mkdirSync(this.dir, { recursive: true }); // not made yet, or removed meanwhile
        writeFileSync(`${file}.tmp`, text);
      }
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      rmSync(`${file}.tmp`, { force: true });
      throw new StateError(`cannot write the record of netns ${record.netnsInode} in ${this.dir}: ${(err as Error).message}`);
    }
    stored.add(record.netnsInode);
    this.cache.set(record.netnsInode, record);
  }
  delete(inode: string): void {
    const file = this.file(inode);
    this.cache.delete(inode);
    try {
      rmSync(file, { force: true });
    } catch (err) {
      throw new StateError(`cannot remove the record of netns ${inode} in ${this.dir}: ${(err as Error).message}`);
    }
    this.storedInodes().delete(inode);
    this.cache.set(inode, undefined);
  }
}

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

export interface ApplyOutcome {
  readonly result: "applied" | "unchanged";
  readonly digest: string;
}

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
    return createHash("sha256").update(`${variant}\n${family}\n${rules.map(ruleLine).join("\n")}`).digest("hex");
  }

  get(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[]): ChainRules | undefined {
    return this.forms.get(SavedFormCache.key(variant, family, rules));
  }

  /** Keep `saved` as the plan's form if it has exactly the plan's rules, chain by chain. */
  learn(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[], saved: ChainRules): void {
    if (rules.some((r) => r.args.some((arg, i) => /^--(uid|gid)-owner$/.test(r.args[i - 1] ?? "") && !/^\d+(-\d+)?$/.test(arg)))) return;
    const planned = new Map<string, number>();
    for (const r of rules) planned.set(`${r.table} ${r.chain}`, (planned.get(`${r.table} ${r.chain}`) ?? 0) + 1);
    const found = Object.entries(saved).flatMap(([table, chains]) => Object.entries(chains).filter(([, specs]) => specs.length > 0).map(([chain, specs]) => [`${table} ${chain}`, specs.length] as const));
    if (found.length !== planned.size || found.some(([chain, n]) => planned.get(chain) !== n)) return;
    const key = SavedFormCache.key(variant, family, rules);
    this.forms.set(key, saved);
  }

  /** A learned form that did not match what the tool printed later: learn it again. */
  forget(variant: IptablesVariant, family: Family, rules: readonly IptablesRule[]): void {
    this.forms.delete(SavedFormCache.key(variant, family, rules));
  }
}

export class IptablesApplier {
  constructor(
    private readonly variant: IptablesVariant,
    private readonly records: RecordStore,
    private readonly run: NetnsRunner = nsenterRunner,
    private readonly savedForms = new SavedFormCache(),
  ) {}

  private async save(netns: NetnsTarget, family: Family): Promise<string> {
    const command = tool(this.variant, family, "save");
    const earlier = netns.earlierSaves?.get(command);
    if (earlier !== undefined) {
      netns.earlierSaves?.delete(command); // valid only until this request changes something
      return earlier;
    }
    const r = await this.run(netns, [command]);
    if (r.code !== 0) throw commandError(tool(this.variant, family, "save"), r);
    return r.stdout;
  }

  private async restore(netns: NetnsTarget, family: Family, input: string): Promise<void> {
    const r = await this.run(netns, [tool(this.variant, family, "restore"), "--noflush"], input);
    if (r.code !== 0) throw commandError(tool(this.variant, family, "restore"), r);
  }

  async apply(netns: NetnsTarget, podUid: string, config: CaptureConfig): Promise<ApplyOutcome> {
    const plan = renderIptables(config);
    const families = plan.v6 === null ? [plan.v4] : [plan.v4, plan.v6];
    const steps = netSetupSteps(config);
    const digest = rulesDigest(this.variant, families, steps);
    const previous = this.records.get(netns.inode);
    const usable = previous !== undefined && previous.podUid === podUid && previous.variant === this.variant ? previous : undefined;

    const live = new Map<Family, ReturnType<typeof parseSave>>();
    for (const family of [4, 6] as const) {
      if (family === 6 && plan.v6 === null && usable?.owned["6"] === undefined && usable?.pending?.["6"] === undefined) continue;
      live.set(family, parseSave(await this.save(netns, family)));
    }
    const recordedBuiltin = (family: Family): ChainRules | undefined => {
      const state = live.get(family);
      return state === undefined ? undefined : ownedBuiltin(usable, family, state);
    };
    // What the runner owns in each family before it changes anything (asked up to three times).
    const ownedBefore = new Map<Family, ChainRules>();
    const ownedNow = (family: Family): ChainRules => {
      let owned = ownedBefore.get(family);
      if (owned === undefined) {
        const state = live.get(family);
        owned = state === undefined ? {} : ownedRules(state, recordedBuiltin(family));
        ownedBefore.set(family, owned);
      }
      return owned;
    };

    if (usable?.digest === digest) {
      const drifted = families.filter((f) => !sameRules(ownedNow(f.family), usable.owned[familyKey(f.family)] ?? {}));
      if (drifted.length === 0 && (plan.v6 !== null || Object.keys(ownedNow(6)).length === 0)) return { result: "unchanged", digest };
      // Changed by someone else, or recorded in a form the tool does not print: learn it again.
      for (const f of drifted) this.savedForms.forget(this.variant, f.family, f.rules);
    }

    // Intent first: a crash from here on leaves a record from which ownership is recovered.
    // Not needed when everything the apply adds is found again without one: built-in-chain
    // lines that all jump to ISTIO_* chains (Istio's default capture) and no link steps.
    if (!(steps.length === 0 && families.every((f) => builtinLinesSelfEvident(f.rules)))) {
      const pending: NonNullable<NetnsRecord["pending"]> = {};
      const carried: NetnsRecord["builtin"] = {};
      for (const [family, state] of live) {
        const key = familyKey(family);
        pending[key] = builtinLines(state.rules);
        const mine = recordedBuiltin(family);
        if (mine !== undefined) carried[key] = mine;
      }
      this.records.put({ podUid, netnsInode: netns.inode, digest: "", variant: this.variant, builtin: carried, owned: usable?.owned ?? {}, netSetup: usable?.netSetup ?? [], pending });
    }

    const builtin: NetnsRecord["builtin"] = {};
    const owned: NetnsRecord["owned"] = {};
    for (const family of [4, 6] as const) {
      const before = live.get(family);
      if (before === undefined) continue;
      const desired = family === 4 ? plan.v4 : plan.v6;
      const current = ownedNow(family);
      if (desired === null && Object.keys(current).length === 0) continue;
      await this.restore(netns, family, replaceTransaction(current, desired?.rules ?? null));
      if (desired === null) continue;
      const key = familyKey(family);
      // The transaction replaced everything owned: what is owned now is the plan, in saved form.
      const known = this.savedForms.get(this.variant, family, desired.rules);
      if (known !== undefined) {
        owned[key] = known;
        builtin[key] = builtinLines(known);
        continue;
      }
      const after = parseSave(await this.save(netns, family));
      // Built-in lines present now that were not there before, plus the ones we replaced.
      const added = addedBuiltinLines(before, after);
      builtin[key] = mergeRules(added, builtinLines(current), after);
      owned[key] = ownedRules(after, builtin[key]);
      this.savedForms.learn(this.variant, family, desired.rules, owned[key]);
    }
    await replaceIpSteps(this.run, netns, usable?.netSetup ?? [], steps);
    this.records.put({ podUid, netnsInode: netns.inode, digest, variant: this.variant, builtin, owned, netSetup: steps });
    return { result: "applied", digest };
  }

  /** Remove exactly what the last apply added (and any ISTIO_* chains). */
  async remove(netns: NetnsTarget, podUid: string): Promise<"removed" | "absent"> {
    const previous = this.records.get(netns.inode);
    const usable = previous?.podUid === podUid ? previous : undefined;
    let removedAny = false;
    for (const family of [4, 6] as const) {
      const state = parseSave(await this.save(netns, family).catch(() => ""));
      const current = ownedRules(state, ownedBuiltin(usable, family, state));
      if (Object.keys(current).length === 0) continue;
      await this.restore(netns, family, replaceTransaction(current, null));
      removedAny = true;
    }
    for (const step of usable?.netSetup ?? []) await runIpStep(this.run, netns, step, "del");
    this.records.delete(netns.inode);
    return removedAny ? "removed" : "absent";
  }

}

/**
 * From the link steps of the previous apply (its record's) to the new config's: those it no
 * longer has are undone first (a TPROXY pod switched to REDIRECT keeps no policy routing), then
 * those it did not have are done. Steps in both are left alone: `ip rule add` of a rule that
 * exists adds a second one.
 */
export async function replaceIpSteps(run: NetnsRunner, netns: NetnsTarget, previous: readonly NetSetupStep[], steps: readonly NetSetupStep[]): Promise<void> {
  const key = (step: NetSetupStep): string => JSON.stringify(step);
  const wanted = new Set(steps.map(key));
  const had = new Set(previous.map(key));
  for (const step of previous) if (!wanted.has(key(step))) await runIpStep(run, netns, step, "del");
  for (const step of steps) if (!had.has(key(step))) await runIpStep(run, netns, step, "add");
}

/** Run one TPROXY/IPv6 network setup step in the namespace. */
export async function runIpStep(run: NetnsRunner, netns: NetnsTarget, step: NetSetupStep, op: "add" | "del"): Promise<void> {
  const r = await run(netns, ["ip", ...ipCommand(step, op)]);
  // Adding what exists, or deleting what is gone, is the state we want.
  if (r.code !== 0 && (r.failure !== undefined || !/File exists|No such|Cannot find|does not exist/i.test(r.stderr))) {
    throw commandError(`ip ${ipCommand(step, op).join(" ")}`, r);
  }
}

/** A family's key in a record. */
const familyKey = (family: Family): "4" | "6" => (family === 4 ? "4" : "6");

/**
 * The built-in-chain lines a record says this runner owns in `state`: as recorded, plus, when
 * an apply died between its intent and its record, every line added since the intent.
 */
function ownedBuiltin(record: NetnsRecord | undefined, family: Family, state: SaveState): ChainRules | undefined {
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

/**
 * Which iptables backend a namespace uses: the one holding rules, else the node's default. The
 * legacy save is skipped where the kernel shows no legacy table in the namespace.
 */
export async function detectVariant(netns: NetnsTarget, nodeDefault: IptablesVariant, run: NetnsRunner = nsenterRunner): Promise<IptablesVariant> {
  for (const variant of ["iptables-nft", "iptables-legacy"] as const) {
    if (variant === "iptables-legacy" && netns.legacyTables?.() === false) break;
    const command = `${variant}-save`;
    let saved = netns.earlierSaves?.get(command);
    if (saved === undefined) {
      const r = await run(netns, [command]);
      if (r.code === 0) netns.earlierSaves?.set(command, r.stdout);
      saved = r.code === 0 ? r.stdout : "";
    }
    if (/^-A /m.test(saved)) return variant;
  }
  return nodeDefault;
}

/**
 * A namespace without any nftables table holds no iptables-nft rule: what iptables-nft-save and
 * ip6tables-nft-save would print there is nothing, so it is taken as their earlier saves and
 * neither runs (`tables`: the helper's listing, undefined when it could not tell).
 */
export function noteEmptyNftTables(netns: NetnsTarget, tables: readonly string[] | undefined): void {
  if (tables?.length !== 0) return;
  netns.earlierSaves?.set(tool("iptables-nft", 4, "save"), "");
  netns.earlierSaves?.set(tool("iptables-nft", 6, "save"), "");
}
