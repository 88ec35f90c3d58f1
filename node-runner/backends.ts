// The rule backends, in one place with one set of names: what the node-runner's --backend flag,
// `pnc plan --backend`, the apply engines and their records all use. A new backend is one entry
// here (its renderer and its apply engine) and nothing else.
import type { CaptureConfig } from "../contract/capture-config.ts";
import type { NetnsRunner, NetnsTarget } from "./apply/commands.ts";
import type { ApplyEngine, ApplyOutcome } from "./apply/engine.ts";
import { IptablesEngine } from "./apply/iptables-engine.ts";
import { commandOps } from "./apply/namespace-ops.ts";
import { NftEngine, nftRulesDigest } from "./apply/nft-engine.ts";
import { rulesDigest } from "./apply/iptables-plan.ts";
import { netSetupSteps } from "./rules/routes.ts";
import type { IptablesVariant, RecordStore } from "./apply/records.ts";
import { detectVariant, savesOfEmptyNftTables, type EarlierSaves } from "./apply/variant.ts";
import { renderIptables } from "./rules/iptables.ts";
import { renderNftables } from "./rules/nftables.ts";

export const BACKENDS = ["iptables-nft", "iptables-legacy", "nftables"] as const;
export type BackendName = (typeof BACKENDS)[number];
export type IptablesBackend = Extract<BackendName, `iptables-${string}`>;

export interface Backend {
  readonly name: BackendName;
  /** What `pnc plan` prints: the input of the backend's tool, per address family where it has them. */
  render(config: CaptureConfig): { readonly text: Partial<Record<"v4" | "v6" | "both", string>> };
  /** The `rules` annotation an apply of `config` with this backend leaves on the pod. */
  digest(config: CaptureConfig): string;
  engine(records: RecordStore): ApplyEngine;
}

const iptables = (name: IptablesBackend): Backend => ({
  name,
  render: (config) => {
    const plan = renderIptables(config);
    return { text: { v4: plan.v4.restore, ...(plan.v6 === null ? {} : { v6: plan.v6.restore }) } };
  },
  digest: (config) => {
    const plan = renderIptables(config);
    return rulesDigest(name, plan.v6 === null ? [plan.v4] : [plan.v4, plan.v6], netSetupSteps(config));
  },
  engine: (records) => new IptablesEngine(name, records),
});

export const BACKEND: Readonly<Record<BackendName, Backend>> = {
  "iptables-nft": iptables("iptables-nft"),
  "iptables-legacy": iptables("iptables-legacy"),
  nftables: {
    name: "nftables",
    render: (config) => ({ text: { both: renderNftables(config).script } }),
    digest: (config) => nftRulesDigest(renderNftables(config).script, netSetupSteps(config)),
    engine: (records) => new NftEngine(records),
  },
};

export function isBackendName(value: string): value is BackendName {
  return (BACKENDS as readonly string[]).includes(value);
}

/** One pod's namespace with the engine chosen for it: what the node-runner's pipeline calls. */
export interface NetnsApplier {
  apply(config: CaptureConfig): Promise<ApplyOutcome>;
  /** The `rules` mark an apply of `config` here would leave (the chosen engine's digest), nothing applied. */
  digest(config: CaptureConfig): string;
  remove(): Promise<"removed" | "absent">;
  /**
   * The namespace held no rules when the engine was chosen (no nftables table, no legacy table)
   * and this runner has no record of it: an apply there is undone by `remove()`.
   */
  readonly untouched: boolean;
}

/** A namespace open for one request, as the chooser needs it (netns.ts's OpenNetns). */
export interface ChoosableNetns extends NetnsTarget {
  /** Whether legacy (x_tables) tables exist in the namespace now; undefined when unknown. */
  legacyTables(): boolean | undefined;
}

/**
 * Which engine programs a pod's namespace. `auto`: the iptables variant its rules were applied
 * with (its record), else the one holding rules there, else the node's. Where this runner has
 * not programmed the pod, a namespace without any nftables table (a new pod's) needs no
 * iptables-nft save: `nftTables` (the command helper's listing) says so. The saves taken to
 * choose are handed to the engine as the state before its apply.
 */
export function applierChooser(options: {
  readonly backend: BackendName | "auto";
  readonly records: RecordStore;
  readonly nodeDefault: IptablesVariant;
  readonly run: NetnsRunner;
  readonly nftTables: (netns: NetnsTarget) => Promise<readonly string[] | undefined>;
}): (netns: ChoosableNetns, podUid: string) => Promise<NetnsApplier> {
  const { backend, records } = options;
  const engines = Object.fromEntries(BACKENDS.map((name) => [name, BACKEND[name].engine(records)])) as Record<BackendName, ApplyEngine>;
  return async (netns, podUid) => {
    const ops = commandOps(options.run, netns);
    const record = records.get(netns.inode);
    const programmed = record?.podUid === podUid;
    // Only where an iptables-nft save could follow (not for the legacy or native engines).
    const nftTables = !programmed && (backend === "auto" || backend === "iptables-nft") ? await options.nftTables(netns) : undefined;
    const untouched = record === undefined && nftTables?.length === 0 && netns.legacyTables() === false;
    let earlier: EarlierSaves = savesOfEmptyNftTables(nftTables);
    let name: BackendName;
    if (backend !== "auto") name = backend;
    else if (programmed && record.variant !== "nftables") name = record.variant;
    else {
      const detected = await detectVariant(ops, options.nodeDefault, earlier, () => netns.legacyTables());
      name = detected.variant;
      earlier = detected.saves;
    }
    const engine = engines[name];
    let applied = false;
    return {
      untouched,
      digest: (config) => BACKEND[name].digest(config),
      apply: (config) => {
        applied = true;
        return engine.apply(ops, netns.inode, podUid, config, earlier);
      },
      // After an apply, the saves taken before it are no longer the namespace's.
      remove: () => engine.remove(ops, netns.inode, podUid, applied ? {} : earlier),
    };
  };
}
