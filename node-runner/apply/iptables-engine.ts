// Program one pod's network namespace with iptables (docs/architecture.md §7): read what is
// there, let the planner (iptables-plan.ts) decide, write the intent, apply one
// iptables-restore transaction per address family, then the link steps, then the record.
// Idempotent: the same rules already in place → "unchanged".
import type { CaptureConfig } from "../../contract/capture-config.ts";
import type { ApplyEngine, ApplyOutcome } from "./engine.ts";
import { parseSave, type SaveState } from "../rules/iptables-text.ts";
import { renderIptables } from "../rules/iptables.ts";
import type { Family } from "../rules/istio.ts";
import { netSetupSteps } from "../rules/routes.ts";
import { replaceIpSteps } from "./ip-steps.ts";
import { completeIptablesApply, familiesToRead, planIptablesApply, planIptablesRemove, usableRecord } from "./iptables-plan.ts";
import type { NamespaceOps } from "./namespace-ops.ts";
import type { IptablesVariant, RecordStore } from "./records.ts";
import { SavedFormCache } from "./saved-forms.ts";
import type { EarlierSaves } from "./variant.ts";

export class IptablesEngine implements ApplyEngine {
  constructor(
    private readonly variant: IptablesVariant,
    private readonly records: RecordStore,
    private readonly savedForms = new SavedFormCache(),
  ) {}

  /** The saves of `families` as they are now: taken earlier in this request, or taken here. */
  private async read(ops: NamespaceOps, families: readonly Family[], earlier: EarlierSaves, tolerant = false): Promise<Map<Family, SaveState>> {
    const states = new Map<Family, SaveState>();
    for (const family of families) {
      let text = earlier[this.variant]?.[family];
      text ??= tolerant ? await ops.iptablesSave(this.variant, family).catch(() => "") : await ops.iptablesSave(this.variant, family);
      states.set(family, parseSave(text));
    }
    return states;
  }

  async apply(ops: NamespaceOps, netnsInode: string, podUid: string, config: CaptureConfig, earlier: EarlierSaves = {}): Promise<ApplyOutcome> {
    const desired = renderIptables(config);
    const record = usableRecord(this.records.get(netnsInode), podUid, this.variant);
    const input = {
      variant: this.variant,
      podUid,
      netnsInode,
      record,
      desired,
      steps: netSetupSteps(config),
      before: await this.read(ops, familiesToRead(desired, record), earlier),
      savedForm: this.savedForms.get.bind(this.savedForms, this.variant),
    };
    const plan = planIptablesApply(input);
    if (plan.kind === "unchanged") return { result: "unchanged", digest: plan.digest };

    for (const family of plan.drifted) {
      const rules = family === 4 ? desired.v4.rules : desired.v6?.rules;
      if (rules !== undefined) this.savedForms.forget(this.variant, family, rules);
    }
    if (plan.intent !== undefined) this.records.put(plan.intent);
    const after = new Map<Family, SaveState>();
    for (const t of plan.transactions) {
      await ops.iptablesRestore(this.variant, t.family, t.input);
      if (t.rules !== null && t.savedForm === undefined) after.set(t.family, parseSave(await ops.iptablesSave(this.variant, t.family)));
    }
    await replaceIpSteps(ops, plan.stepsBefore, input.steps);
    const { record: done, learned } = completeIptablesApply(input, plan, after);
    for (const l of learned) this.savedForms.learn(this.variant, l.family, l.rules, l.saved);
    this.records.put(done);
    return { result: "applied", digest: plan.digest };
  }

  /** Take out exactly what the last apply added (and any ISTIO_* chains). */
  async remove(ops: NamespaceOps, netnsInode: string, podUid: string, earlier: EarlierSaves = {}): Promise<"removed" | "absent"> {
    const previous = this.records.get(netnsInode);
    const record = previous?.podUid === podUid && previous.variant !== "nftables" ? previous : undefined;
    const transactions = planIptablesRemove(record, await this.read(ops, [4, 6], earlier, true));
    for (const t of transactions) await ops.iptablesRestore(this.variant, t.family, t.input);
    await replaceIpSteps(ops, previous?.podUid === podUid ? previous.netSetup : [], []);
    this.records.delete(netnsInode);
    return transactions.length > 0 ? "removed" : "absent";
  }
}
