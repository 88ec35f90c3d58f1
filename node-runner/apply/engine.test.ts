// The apply engine's command sequence without root (a recording runner): the variant probe's
// saves are not taken again by the engine in the same request, and the legacy probe is skipped
// where the kernel shows no legacy table.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../../contract/capture-config.ts";
import { renderIptables } from "../rules/iptables.ts";
import type { NetnsRunner } from "./commands.ts";
import { IptablesEngine } from "./iptables-engine.ts";
import { commandOps } from "./namespace-ops.ts";
import { RecordStore } from "./records.ts";
import { SavedFormCache } from "./saved-forms.ts";
import { detectVariant } from "./variant.ts";

for (const legacyTables of [undefined, false] as const) {
  test(`an apply after the variant probe uses the probe's save as its state before (legacy tables ${String(legacyTables)})`, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-apply-"));
    try {
      const commands: string[] = [];
      // A fresh namespace: every save is empty, every restore succeeds.
      const run: NetnsRunner = (_netns, argv) => {
        commands.push(argv[0] ?? "");
        return Promise.resolve({ code: 0, stdout: "", stderr: "" });
      };
      const ops = commandOps(run, { fd: -1, inode: "4026532999" });
      const { variant, saves } = await detectVariant(ops, "iptables-nft", {}, () => legacyTables);
      assert.equal(variant, "iptables-nft");
      const outcome = await new IptablesEngine(variant, new RecordStore(dir)).apply(
        ops,
        "4026532999",
        "uid-1",
        parseCaptureConfig(DEFAULT_CAPTURE_CONFIG),
        saves,
      );
      assert.equal(outcome.result, "applied");
      const probe = legacyTables === false ? ["iptables-nft-save"] : ["iptables-nft-save", "iptables-legacy-save"];
      // The save after the restore: this runner's saves are empty, so there is no form to keep.
      assert.deepEqual(commands, [...probe, "iptables-nft-restore", "iptables-nft-save"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test("a saved form is kept only when it holds exactly the plan's rules, chain by chain, and never for owner names", () => {
  const cache = new SavedFormCache(2);
  const rules = renderIptables(parseCaptureConfig(DEFAULT_CAPTURE_CONFIG)).v4.rules;
  const saved: Record<string, Record<string, string[]>> = {};
  for (const r of rules) ((saved[r.table] ??= {})[r.chain] ??= []).push(`${r.args.join(" ")} (as saved)`);
  cache.learn("iptables-nft", 4, rules.slice(1), saved);
  assert.equal(cache.get("iptables-nft", 4, rules.slice(1)), undefined, "one rule more than the plan");
  cache.learn("iptables-nft", 4, rules, saved);
  assert.equal(cache.get("iptables-nft", 4, rules), saved);
  assert.equal(cache.get("iptables-legacy", 4, rules), undefined, "per tool");
  assert.equal(cache.get("iptables-nft", 6, rules), undefined, "per family");
  cache.forget("iptables-nft", 4, rules);
  assert.equal(cache.get("iptables-nft", 4, rules), undefined);

  const named = [{ table: "nat" as const, chain: "ISTIO_OUTPUT", args: ["-m", "owner", "--gid-owner", "istio", "-j", "RETURN"] }];
  cache.learn("iptables-nft", 4, named, { nat: { ISTIO_OUTPUT: ["-m owner --gid-owner 1337 -j RETURN"] } });
  assert.equal(cache.get("iptables-nft", 4, named), undefined, "owner names resolve to numbers that may change");

  const bounded = (n: number) => [{ table: "nat" as const, chain: "ISTIO_OUTPUT", args: ["-d", `192.0.2.${n}/32`, "-j", "RETURN"] }];
  for (const n of [1, 2, 3]) cache.learn("iptables-nft", 4, bounded(n), { nat: { ISTIO_OUTPUT: [`-d 192.0.2.${n}/32 -j RETURN`] } });
  assert.equal(cache.get("iptables-nft", 4, bounded(1)), undefined, "the oldest is forgotten first");
  assert.ok(cache.get("iptables-nft", 4, bounded(3)));
});
