// Program a pod's network namespace with nftables natively (Istio's nftables backend): the
// rendered transaction already adds and flushes each Istio table before filling it, so one
// `nft -f` replaces the rules atomically; tables the config no longer needs are deleted in the
// same transaction.
import { createHash } from "node:crypto";
import type { CaptureConfig } from "../contract/capture-config.ts";
import { commandError, nsenterRunner, RecordStore, replaceIpSteps, runIpStep, type ApplyOutcome, type NetnsRunner, type NetnsTarget } from "./apply.ts";
import { NFT_TABLE } from "./rules/istio.ts";
import { renderNftables } from "./rules/nftables.ts";
import { netSetupSteps } from "./rules/routes.ts";

const ISTIO_TABLES = Object.values(NFT_TABLE);

export class NftApplier {
  constructor(
    private readonly records: RecordStore,
    private readonly run: NetnsRunner = nsenterRunner,
  ) {}

  /** The Istio tables as they are now (stateless listing: no counters), hashed. */
  private async listing(netns: NetnsTarget): Promise<{ hash: string; present: string[] }> {
    const r = await this.run(netns, ["nft", "-s", "list", "tables", "inet"]);
    if (r.code !== 0) throw commandError("nft list tables", r);
    const present = ISTIO_TABLES.filter((t) => new RegExp(`^table inet ${t}$`, "m").test(r.stdout));
    const h = createHash("sha256");
    for (const table of present) {
      const t = await this.run(netns, ["nft", "-s", "list", "table", "inet", table]);
      if (t.code !== 0) throw commandError(`nft list table ${table}`, t);
      h.update(t.stdout);
    }
    return { hash: h.digest("hex"), present };
  }

  private async transaction(netns: NetnsTarget, script: string): Promise<void> {
    const r = await this.run(netns, ["nft", "-f", "-"], script);
    if (r.code !== 0) throw commandError("nft -f", r);
  }

  async apply(netns: NetnsTarget, podUid: string, config: CaptureConfig): Promise<ApplyOutcome> {
    const plan = renderNftables(config);
    const steps = netSetupSteps(config);
    const digest = createHash("sha256").update(`nftables\n${plan.script}${JSON.stringify(steps)}`).digest("hex").slice(0, 16);
    const previous = this.records.get(netns.inode);
    const before = await this.listing(netns);
    if (previous?.podUid === podUid && previous.variant === "nftables" && previous.digest === digest && previous.nftListing === before.hash) {
      return { result: "unchanged", digest };
    }
    const wanted = new Set<string>(plan.rules.map((r) => NFT_TABLE[r.table]));
    // `add` before `delete` makes deleting a table that does not exist a no-op.
    const stale = before.present.filter((t) => !wanted.has(t)).flatMap((t) => [`add table inet ${t}`, `delete table inet ${t}`]);
    await this.transaction(netns, `${[...stale, plan.script.trimEnd()].filter((l) => l !== "").join("\n")}\n`);
    await replaceIpSteps(this.run, netns, previous?.podUid === podUid ? previous.netSetup : [], steps);
    const after = await this.listing(netns);
    this.records.put({ podUid, netnsInode: netns.inode, digest, variant: "nftables", nftListing: after.hash, builtin: {}, owned: {}, netSetup: steps });
    return { result: "applied", digest };
  }

  async remove(netns: NetnsTarget, podUid: string): Promise<"removed" | "absent"> {
    const previous = this.records.get(netns.inode);
    const { present } = await this.listing(netns);
    if (present.length > 0) await this.transaction(netns, `${present.flatMap((t) => [`add table inet ${t}`, `delete table inet ${t}`]).join("\n")}\n`);
    for (const step of previous?.podUid === podUid ? previous.netSetup : []) await runIpStep(this.run, netns, step, "del");
    this.records.delete(netns.inode);
    return present.length > 0 ? "removed" : "absent";
  }
}
