// The rule backends, in one place with one set of names: what the node-runner's --backend flag,
// `pnc plan --backend`, the apply engines and their records all use. A new backend is one entry
// here (its renderer and its apply engine) and nothing else.
import type { CaptureConfig } from "../contract/capture-config.ts";
import { detectVariant, IptablesApplier, noteEmptyNftTables, nsenterRunner, type IptablesVariant, type NetnsRunner, type NetnsTarget, type RecordStore } from "./apply.ts";
import { NftApplier } from "./apply-nft.ts";
import { renderIptables } from "./rules/iptables.ts";
import { renderNftables } from "./rules/nftables.ts";

export const BACKENDS = ["iptables-nft", "iptables-legacy", "nftables"] as const;
export type BackendName = (typeof BACKENDS)[number];
export type IptablesBackend = Extract<BackendName, `iptables-${string}`>;

/** What an apply engine offers the node-runner's server. */
export interface NetnsApplier {
  apply(netns: NetnsTarget, podUid: string, config: CaptureConfig): Promise<{ result: "applied" | "unchanged"; digest: string }>;
  remove(netns: NetnsTarget, podUid: string): Promise<"removed" | "absent">;
}

export interface Backend {
  readonly name: BackendName;
  /** What `pnc plan` prints: the input of the backend's tool, per address family where it has them. */
  render(config: CaptureConfig): { readonly text: Partial<Record<"v4" | "v6" | "both", string>> };
  applier(records: RecordStore, run?: NetnsRunner): NetnsApplier;
}

const iptables = (name: IptablesBackend): Backend => ({
  name,
  render: (config) => {
    const plan = renderIptables(config);
    return { text: { v4: plan.v4.restore, ...(plan.v6 === null ? {} : { v6: plan.v6.restore }) } };
  },
  applier: (records, run = nsenterRunner) => new IptablesApplier(name, records, run),
});

export const BACKEND: Readonly<Record<BackendName, Backend>> = {
  "iptables-nft": iptables("iptables-nft"),
  "iptables-legacy": iptables("iptables-legacy"),
  nftables: {
    name: "nftables",
    render: (config) => ({ text: { both: renderNftables(config).script } }),
    applier: (records, run = nsenterRunner) => new NftApplier(records, run),
  },
};

export function isBackendName(value: string): value is BackendName {
  return (BACKENDS as readonly string[]).includes(value);
}

/**
 * Which engine programs a pod's namespace. `auto`: the iptables variant its rules were applied
 * with (its record), else the one holding rules there, else the node's. Where this runner has
 * not programmed the pod, a namespace without any nftables table (a new pod's) needs no
 * iptables-nft save: `nftTables` (the command helper's listing) says so.
 */
export function applierChooser(options: {
  readonly backend: BackendName | "auto";
  readonly appliers: Readonly<Record<BackendName, NetnsApplier>>;
  readonly records: RecordStore;
  readonly nodeDefault: IptablesVariant;
  readonly run: NetnsRunner;
  readonly nftTables: (netns: NetnsTarget) => Promise<readonly string[] | undefined>;
}): (netns: NetnsTarget, podUid: string) => Promise<NetnsApplier> {
  const { backend, appliers } = options;
  return async (netns, podUid) => {
    const record = options.records.get(netns.inode);
    const programmed = record?.podUid === podUid;
    // Only where an iptables-nft save could follow (not for the legacy or native engines).
    if (!programmed && (backend === "auto" || backend === "iptables-nft")) noteEmptyNftTables(netns, await options.nftTables(netns));
    if (backend !== "auto") return appliers[backend];
    if (programmed && (record.variant === "iptables-nft" || record.variant === "iptables-legacy")) return appliers[record.variant];
    return appliers[await detectVariant(netns, options.nodeDefault, options.run)];
  };
}
