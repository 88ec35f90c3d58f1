// What every backend's apply engine offers (iptables-engine.ts, nft-engine.ts): apply a capture
// config to a namespace through its NamespaceOps, or take out what it applied there.
import type { CaptureConfig } from "../../contract/capture-config.ts";
import type { NamespaceOps } from "./namespace-ops.ts";
import type { EarlierSaves } from "./variant.ts";

export interface ApplyOutcome {
  readonly result: "applied" | "unchanged";
  /** What was applied (the `rules` mark). */
  readonly digest: string;
}

export interface ApplyEngine {
  /** `earlier`: saves this request already took, before anything changed (variant.ts). */
  apply(ops: NamespaceOps, netnsInode: string, podUid: string, config: CaptureConfig, earlier?: EarlierSaves): Promise<ApplyOutcome>;
  remove(ops: NamespaceOps, netnsInode: string, podUid: string, earlier?: EarlierSaves): Promise<"removed" | "absent">;
}
