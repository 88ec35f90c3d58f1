// Benchmark: programming a pod's network namespace the node-runner's way (find the netns in
// /proc, render, one iptables-restore transaction) against the same rules applied one
// iptables command per rule, the way the original controller's shell script did. Real test
// pods, side by side in one run. Needs root.  npm run bench:apply -- [pods]
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../contract/capture-config.ts";
import { IptablesApplier, RecordStore, type IptablesVariant } from "../node-runner/apply.ts";
import { openNetns, resolvePodNetns } from "../node-runner/netns.ts";
import { renderIptables, type IptablesRule } from "../node-runner/rules/iptables.ts";
import { TestPods, testPodsUnavailableReason } from "../test/support/test-pods.ts";
import { machineDescription, summarize, table } from "./machine.ts";

const unavailable = testPodsUnavailableReason();
if (unavailable !== undefined) {
  console.error(`bench:apply ${unavailable}`);
  process.exit(1);
}
const count = Number(process.argv[2] ?? "50");
const variant: IptablesVariant = /nf_tables/.test(execFileSync("iptables", ["--version"], { encoding: "utf8" })) ? "iptables-nft" : "iptables-legacy";
const config = parseCaptureConfig(DEFAULT_CAPTURE_CONFIG);
const stateDir = mkdtempSync(path.join(os.tmpdir(), "pnct-bench-"));
const pods = TestPods.create();

/** The shell-script way: declare chains, then one iptables invocation per rule, in the pod's netns. */
function perRule(netnsPath: string, rules: readonly IptablesRule[]): void {
  const ipt = variant;
  const chains = new Map<string, string>();
  for (const r of rules) if (r.chain.startsWith("ISTIO_")) chains.set(`${r.table}/${r.chain}`, r.table);
  for (const r of rules) {
    const target = r.args[r.args.length - 1];
    if (r.args[r.args.length - 2] === "-j" && target?.startsWith("ISTIO_") === true) chains.set(`${r.table}/${target}`, r.table);
  }
  for (const [key, table] of chains) execFileSync("nsenter", [`--net=${netnsPath}`, ipt, "-t", table, "-N", key.split("/")[1] ?? ""]);
  for (const r of rules) {
    const op = r.position === undefined ? ["-A", r.chain] : ["-I", r.chain, String(r.position)];
    execFileSync("nsenter", [`--net=${netnsPath}`, ipt, "-t", r.table, ...op, ...r.args]);
  }
}

try {
  const applier = new IptablesApplier(variant, new RecordStore(stateDir));
  const restoreMs: number[] = [];
  const perRuleMs: number[] = [];
  const resolveMs: number[] = [];
  let ruleCount = 0;
  process.stderr.write(`creating ${count * 2} test pods `);
  const targets = Array.from({ length: count * 2 }, (_, i) => {
    if (i % 20 === 0) process.stderr.write(".");
    return pods.add();
  });
  process.stderr.write("\n");
  for (let i = 0; i < count; i++) {
    // Alternate the two methods so that drift in the machine's load hits both alike.
    for (const method of ["restore", "per-rule"] as const) {
      const pod = targets[i * 2 + (method === "restore" ? 0 : 1)];
      if (pod === undefined) throw new Error("missing pod");
      const t0 = performance.now();
      const resolved = await resolvePodNetns({ uid: pod.uid, ips: [pod.ip] }, { cgroupRoot: pods.cgroupRoot });
      const t1 = performance.now();
      if (!resolved.found) throw new Error(resolved.detail);
      if (method === "restore") {
        const netns = openNetns(resolved.netns);
        const outcome = await applier.apply(netns, pod.uid, config).finally(() => {
          netns.close();
        });
        if (outcome.result !== "applied") throw new Error("expected applied");
        restoreMs.push(performance.now() - t0);
        resolveMs.push(t1 - t0);
      } else {
        const plan = renderIptables(config);
        ruleCount = plan.v4.rules.length;
        perRule(resolved.netns.path, plan.v4.rules);
        perRuleMs.push(performance.now() - t0);
      }
    }
  }
  const row = (name: string, samples: number[]): (string | number)[] => {
    const s = summarize(samples);
    return [name, String(samples.length), s.min, s.median, s.p95, s.max];
  };
  console.log(machineDescription());
  console.log(`Istio default capture config, IPv4: ${ruleCount} rules; ${variant}; times in ms per pod\n`);
  console.log(
    table(["method", "pods", "min", "median", "p95", "max"], [
      row("node-runner: resolve + render + iptables-save/compare + one iptables-restore", restoreMs),
      row("resolve + render + one iptables command per rule (original controller's way)", perRuleMs),
      row("  (netns resolution alone: the pod cgroup read directly, in both rows)", resolveMs),
    ]),
  );
} finally {
  await pods.destroy();
  rmSync(stateDir, { recursive: true, force: true });
}
