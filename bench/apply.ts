// Benchmark: programming a pod's network namespace the node-runner's way (find the netns from
// the pod's cgroup, render, one iptables-restore transaction through its command helper)
// against its floor, a bare `nsenter` + `iptables-restore` of the same rules forked from this
// process, and against one iptables command per rule, the way the original controller's shell
// script did. Netns resolution is timed both ways: the pod cgroup read directly, and the /proc
// scan it falls back to. Real test pods, side by side in one run, optionally with N idle
// processes on the machine (a busy node). Needs root.
//   npm run bench:apply -- [pods] [--processes N]
import { execFileSync } from "node:child_process";
import { parseArgs } from "node:util";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../contract/capture-config.ts";
import { RecordStore } from "../node-runner/apply/records.ts";
import { applierChooser } from "../node-runner/backends.ts";
import { helperRunner } from "../node-runner/helper-runner.ts";
import { goProgram } from "../test/support/go-programs.ts";
import { openNetns, resolvePodNetns } from "../node-runner/netns.ts";
import { renderIptables } from "../node-runner/rules/iptables.ts";
import type { IptablesRule } from "../node-runner/rules/istio.ts";
import { replaceTransaction } from "../node-runner/rules/iptables-text.ts";
import { TestPods, testPodsUnavailableReason } from "../test/support/test-pods.ts";
import { idleProcesses, machineDescription, machineIptablesVariant, processCount, shellTimedRestore, summarize, table, Teardown } from "./machine.ts";

const unavailable = testPodsUnavailableReason();
if (unavailable !== undefined) {
  console.error(`bench:apply ${unavailable}`);
  process.exit(1);
}
const { values: flags, positionals } = parseArgs({ allowPositionals: true, options: { processes: { type: "string", default: "0" } } });
const count = Number(positionals[0] ?? "50");
const extraProcesses = Number(flags.processes);
const variant = machineIptablesVariant();
const config = parseCaptureConfig(DEFAULT_CAPTURE_CONFIG);
const teardown = new Teardown();
const stateDir = mkdtempSync(path.join(os.tmpdir(), "pnct-bench-"));
const pods = TestPods.create();
teardown.add(() => {
  rmSync(stateDir, { recursive: true, force: true });
});
teardown.add(() => pods.destroy());

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

const idle = await idleProcesses(extraProcesses);
teardown.add(() => {
  idle.stop();
});
// The command helper as the image runs it.
const helper = helperRunner(goProgram("podnet-netns-exec"));
teardown.add(() => {
  helper.stop();
});
try {
  const processes = processCount();
  // As main.ts runs it: commands through the long-lived helper.
  const records = new RecordStore(stateDir);
  const chooseApplier = applierChooser({ backend: "auto", records, nodeDefault: variant, run: helper.run, nftTables: helper.nftTables });
  const restoreMs: number[] = [];
  const floorMs: number[] = [];
  const shellFloorMs: number[] = [];
  const perRuleMs: number[] = [];
  const resolveMs: number[] = [];
  const scanMs: number[] = [];
  let ruleCount = 0;
  // The node-runner and its floors alternate, so that drift in the machine's load hits all
  // alike; the original controller's way (30 forks per pod) and the /proc scan (thousands of
  // reads) run in a phase of their own afterwards: interleaved, they slowed the next
  // measurement by a millisecond or more.
  const methods = ["restore", "floor", "shell-floor"] as const;
  process.stderr.write(`creating ${count * (methods.length + 1)} test pods `);
  const targets = Array.from({ length: count * (methods.length + 1) }, (_, i) => {
    if (i % 20 === 0) process.stderr.write(".");
    return pods.add();
  });
  process.stderr.write("\n");
  const plan = renderIptables(config);
  ruleCount = plan.v4.rules.length;
  const floorInput = replaceTransaction({}, plan.v4.rules);
  const restored: { uid: string; ip: string }[] = [];
  for (let i = 0; i < count; i++) {
    for (const [k, method] of methods.entries()) {
      const pod = targets[i * methods.length + k];
      if (pod === undefined) throw new Error("missing pod");
      const t0 = performance.now();
      const resolved = await resolvePodNetns({ uid: pod.uid, ips: [pod.ip] }, { cgroupRoot: pods.cgroupRoot });
      const t1 = performance.now();
      if (!resolved.found) throw new Error(resolved.detail);
      if (method === "restore") {
        // As main.ts with --backend auto: its own choice of engine, then the apply.
        const netns = openNetns(resolved.netns);
        const outcome = await chooseApplier(netns, pod.uid)
          .then((applier) => applier.apply(config))
          .finally(() => {
            netns.close();
          });
        if (outcome.result !== "applied") throw new Error("expected applied");
        restoreMs.push(performance.now() - t0);
        resolveMs.push(t1 - t0);
        restored.push(pod);
      } else if (method === "floor") {
        const f0 = performance.now();
        execFileSync("nsenter", [`--net=${resolved.netns.path}`, `${variant}-restore`, "--noflush"], { input: floorInput });
        floorMs.push(performance.now() - f0);
      } else {
        shellFloorMs.push(shellTimedRestore(variant, resolved.netns.path, floorInput));
      }
    }
  }
  for (const [i, pod] of restored.entries()) {
    // The fallback: every process's cgroup read (no pod cgroup where it looks).
    const s0 = performance.now();
    const scanned = await resolvePodNetns({ uid: pod.uid, ips: [pod.ip] }, { cgroupRoot: pods.cgroupRoot, cgroupFs: "/nonexistent" });
    if (!scanned.found || scanned.method !== "proc-scan") throw new Error("expected a /proc scan");
    scanMs.push(performance.now() - s0);
    const fresh = targets[count * methods.length + i];
    if (fresh === undefined) throw new Error("missing pod");
    const t0 = performance.now();
    const resolved = await resolvePodNetns({ uid: fresh.uid, ips: [fresh.ip] }, { cgroupRoot: pods.cgroupRoot });
    if (!resolved.found) throw new Error(resolved.detail);
    perRule(resolved.netns.path, plan.v4.rules);
    perRuleMs.push(performance.now() - t0);
  }
  const row = (name: string, samples: number[]): (string | number)[] => {
    const s = summarize(samples);
    return [name, String(samples.length), s.min, s.median, s.p95, s.max];
  };
  console.log(machineDescription());
  console.log(`Istio default capture config, IPv4: ${ruleCount} rules; ${variant}; ${processes} processes on the machine; times in ms per pod\n`);
  const median = (xs: number[]): number => summarize(xs).median;
  console.log(
    table(
      ["method", "pods", "min", "median", "p95", "max"],
      [
        row("floor: nsenter + iptables-restore of the same rules (bare tool, forked here)", floorMs),
        row("floor: the same from a shell (no Node process in between)", shellFloorMs),
        row("node-runner: resolve, choose engine, render, compare, restore (helper)", restoreMs),
        row("resolve + one iptables command per rule (original controller's way; own phase)", perRuleMs),
        row("  netns resolution: the pod cgroup read directly (in the node-runner row)", resolveMs),
        row("  netns resolution: /proc scan (the fallback when no pod cgroup is found; own phase)", scanMs),
      ],
    ),
  );
  console.log(
    `\nnode-runner / floor (medians): ${(median(restoreMs) / median(floorMs)).toFixed(2)}× (forked from Node), ${(median(restoreMs) / median(shellFloorMs)).toFixed(2)}× (from a shell)`,
  );
} finally {
  await teardown.run();
}
