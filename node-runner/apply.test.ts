// The apply engine's command sequence without root (a recording runner): the variant probe's
// saves are not taken again by the engine in the same request.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../contract/capture-config.ts";
import { detectVariant, IptablesApplier, RecordStore, type NetnsRunner } from "./apply.ts";

test("an apply after the variant probe uses the probe's save as its state before: one command fewer", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-apply-"));
  try {
    const commands: string[] = [];
    // A fresh namespace: every save is empty, every restore succeeds.
    const run: NetnsRunner = (_netns, argv) => {
      commands.push(argv[0] ?? "");
      return Promise.resolve({ code: 0, stdout: "", stderr: "" });
    };
    const netns = { fd: -1, inode: "4026532999", earlierSaves: new Map<string, string>() };
    const variant = await detectVariant(netns, "iptables-nft", run);
    assert.equal(variant, "iptables-nft");
    const outcome = await new IptablesApplier(variant, new RecordStore(dir), run).apply(netns, "uid-1", parseCaptureConfig(DEFAULT_CAPTURE_CONFIG));
    assert.equal(outcome.result, "applied");
    assert.deepEqual(commands, ["iptables-nft-save", "iptables-legacy-save", "iptables-nft-restore", "iptables-nft-save"]);
    assert.equal(netns.earlierSaves.size, 1, "only the unused probe (legacy) is left");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
