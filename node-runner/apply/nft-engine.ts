// Program a pod's network namespace with nftables natively (Istio's nftables backend): the
// rendered transaction already adds and flushes each Istio table before filling it, so one
// `nft -f` replaces the rules atomically; tables the config no longer needs are deleted in the
// same transaction.
import { createHash } from "node:crypto";
import type { CaptureConfig } from "../../contract/capture-config.ts";
import { NFT_TABLE } from "../rules/istio.ts";
import { renderNftables } from "../rules/nftables.ts";
import { netSetupSteps, type NetSetupStep } from "../rules/routes.ts";
import type { ApplyEngine, ApplyOutcome } from "./engine.ts";
import { replaceIpSteps } from "./ip-steps.ts";
import type { NamespaceOps } from "./namespace-ops.ts";
import type { RecordStore } from "./records.ts";

const ISTIO_TABLES = Object.values(NFT_TABLE);

/** The Istio tables present in `nft -s list tables inet`. */
function istioTablesIn(listing: string): string[] {
  const present = new Set(listing.split("\n").map((line) => line.trim()));
  return ISTIO_TABLES.filter((t) => present.has(`table inet ${t}`));
}

/** The transaction that deletes `tables` (`add` first: deleting a table that is gone is then no error). */
function deleteTables(tables: readonly string[]): string[] {
  return tables.flatMap((t) => [`add table inet ${t}`, `delete table inet ${t}`]);
}

/** The `rules` annotation of an nftables apply: the transaction's script and the link steps, hashed. */
export function nftRulesDigest(script: string, steps: readonly NetSetupStep[]): string {
  return createHash("sha256")
    .update(`nftables\n${script}${JSON.stringify(steps)}`)
    .digest("hex")
    .slice(0, 16);
}

export class NftEngine implements ApplyEngine {
  constructor(private readonly records: RecordStore) {}

  /** The Istio tables as they are now, hashed. */
  private async listing(ops: NamespaceOps): Promise<{ hash: string; present: string[] }> {
    const present = istioTablesIn(await ops.nftList());
    const h = createHash("sha256");
    for (const table of present) h.update(await ops.nftList(table));
    return { hash: h.digest("hex"), present };
  }

  async apply(ops: NamespaceOps, netnsInode: string, podUid: string, config: CaptureConfig): Promise<ApplyOutcome> {
    const plan = renderNftables(config);
    const steps = netSetupSteps(config);
    const digest = nftRulesDigest(plan.script, steps);
    const previous = this.records.get(netnsInode);
    const mine = previous?.podUid === podUid ? previous : undefined;
    const before = await this.listing(ops);
    if (mine?.variant === "nftables" && mine.digest === digest && mine.nftListing === before.hash) return { result: "unchanged", digest };
    const wanted = new Set<string>(plan.rules.map((r) => NFT_TABLE[r.table]));
    const stale = deleteTables(before.present.filter((t) => !wanted.has(t)));
    await ops.nftApply(`${[...stale, plan.script.trimEnd()].filter((l) => l !== "").join("\n")}\n`);
    await replaceIpSteps(ops, mine?.netSetup ?? [], steps);
    const after = await this.listing(ops);
    this.records.put({ podUid, netnsInode, digest, variant: "nftables", nftListing: after.hash, netSetup: steps });
    return { result: "applied", digest };
  }

  async remove(ops: NamespaceOps, netnsInode: string, podUid: string): Promise<"removed" | "absent"> {
    const previous = this.records.get(netnsInode);
    const { present } = await this.listing(ops);
    if (present.length > 0) await ops.nftApply(`${deleteTables(present).join("\n")}\n`);
    await replaceIpSteps(ops, previous?.podUid === podUid ? previous.netSetup : [], []);
    this.records.delete(netnsInode);
    return present.length > 0 ? "removed" : "absent";
  }
}
