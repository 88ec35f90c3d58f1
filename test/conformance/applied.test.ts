// Istio conformance of what the node-runner actually applies. capture.test.ts proves the
// rendered restore text equals Istio's golden, byte for byte; but the engine never applies that
// text: it applies its own transaction (rules/iptables-text.ts, replaceTransaction), which also
// takes out what it owned before. Here, for every case of Istio's capture table and both
// iptables variants, the kernel is the judge: one fresh namespace gets the engine's apply (as
// the node-runner runs it: a second config first, then the case's, so the replace path is what
// is compared), another gets the golden text restored as istio-init would, and their saves must
// be the same.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../../contract/capture-config.ts";
import { IptablesEngine } from "../../node-runner/apply/iptables-engine.ts";
import { RecordStore } from "../../node-runner/apply/records.ts";
import { drivenEngine } from "../../node-runner/apply/transcript.ts";
import { openNetns, resolvePodNetns, type OpenNetns } from "../../node-runner/netns.ts";
import { unknownOwnerGroups } from "../../node-runner/groups.ts";
import { renderIptables } from "../../node-runner/rules/iptables.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { TestPods, testPodsUnavailableReason, type TestPod } from "../support/test-pods.ts";
import { loadConfigCases, missingConformanceReason } from "./load.ts";

const unavailable = missingConformanceReason() ?? testPodsUnavailableReason();

/**
 * A namespace's rules as a save prints them, without comments and counters, and without tables
 * that hold nothing (the engine's replace leaves a table a previous config used instantiated and
 * empty; no packet sees a difference).
 */
function saved(pod: TestPod, variant: string): string {
  return ["iptables", "ip6tables"]
    .map((tool) =>
      pod
        .exec([`${tool}-${variant}-save`])
        .split("\n")
        .filter((l) => !l.startsWith("#"))
        .map((l) => l.replace(/\[\d+:\d+\]/g, "").trimEnd())
        .join("\n")
        .split(/(?=^\*)/m)
        .filter((table) => !table.startsWith("*") || /^(-A|:(?!(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ))/m.test(table))
        .join(""),
    )
    .join("\n");
}

describe("istio conformance: the transaction the engine applies, judged by the kernel [needs root]", skipUnlessCI(unavailable), () => {
  let pods: TestPods;
  let stateDir: string;
  const opened: OpenNetns[] = [];
  before(() => {
    assertAvailable(unavailable);
    pods = TestPods.create();
    stateDir = mkdtempSync(path.join(os.tmpdir(), "pnct-applied-"));
  });
  after(async () => {
    for (const netns of opened) netns.close();
    await pods.destroy();
    rmSync(stateDir, { recursive: true, force: true });
  });

  const cases = unavailable === undefined ? loadConfigCases("capture") : [];
  for (const variant of ["iptables-nft", "iptables-legacy"] as const) {
    test(`every case of Istio's capture table (${variant})`, async (t) => {
      const engine = drivenEngine(new IptablesEngine(variant, new RecordStore(mkdtempSync(path.join(stateDir, variant)))));
      const other = parseCaptureConfig({
        ...DEFAULT_CAPTURE_CONFIG,
        inboundInterceptionMode: "TPROXY",
        excludeInterfaces: "eth9",
        enableIPv6: true,
        dropInvalid: true,
      });
      const compared: string[] = [];
      for (const c of cases) {
        const config = parseCaptureConfig(c.config);
        // Group names this machine cannot resolve: the node-runner refuses them (422), and istio-init's restore fails alike.
        if (unknownOwnerGroups(config).length > 0) continue;
        compared.push(c.name);
        const byEngine = pods.add();
        const resolved = await resolvePodNetns({ uid: byEngine.uid, ips: [byEngine.ip] }, { cgroupRoot: pods.cgroupRoot });
        assert.ok(resolved.found, c.name);
        const netns = openNetns(resolved.netns);
        opened.push(netns);
        await engine.apply(netns, byEngine.uid, other);
        assert.equal((await engine.apply(netns, byEngine.uid, config)).result, "applied", c.name);

        const byIstio = pods.add();
        const plan = renderIptables(config);
        byIstio.exec([`iptables-${variant.slice(9)}-restore`, "--noflush"], { input: plan.v4.restore });
        if (plan.v6 !== null) byIstio.exec([`ip6tables-${variant.slice(9)}-restore`, "--noflush"], { input: plan.v6.restore });

        assert.equal(saved(byEngine, variant.slice(9)), saved(byIstio, variant.slice(9)), `${c.name}: the engine's rules are Istio's`);
      }
      assert.ok(compared.length >= 20, `compared ${compared.length} of ${cases.length} cases`);
      t.diagnostic(`${compared.length} of ${cases.length} cases compared (the others name owner groups this machine does not have)`);
    });
  }
});
