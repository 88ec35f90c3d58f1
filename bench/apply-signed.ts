// Benchmark: one pod's apply as the decision function asks for it, measured from outside — a
// signed POST /v1/apply to the compiled node-runner (its DaemonSet's V8 flags, its state
// directory on a tmpfs as /run/podnet is), answered 200 once the rules are in the pod's real
// network namespace and the pod is marked in the real kube-apiserver — beside its floor in the
// same run, pod by pod alternating: a bare `nsenter` + `iptables-restore` of the same rules
// timed inside a shell, plus one bare PATCH of the same mark (a merge patch with the
// node-runner's own token over a kept-alive connection, the pod's first patch as the runner's
// mark is). Where the rest goes: the runner's own time (its answer's durationMs), a signed
// request it refuses before any work (the request's own path), the bare PATCH its identity check
// makes, and its apply and netns histograms. Optionally with N
// idle processes on the machine (a busy node). Needs root and the control plane.
//   npm run bench:apply-signed -- [pods] [--processes N]
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import https from "node:https";
import path from "node:path";
import { parseArgs } from "node:util";
import { APPLY_PATH } from "../contract/apply-request.ts";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../contract/capture-config.ts";
import { CLEAR_LEGACY_MARK, MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { METADATA_ONLY } from "../node-runner/kube.ts";
import { renderIptables } from "../node-runner/rules/iptables.ts";
import { replaceTransaction } from "../node-runner/rules/iptables-text.ts";
import { podPath } from "../lib/kube-http.ts";
import { missingBinariesReason, startControlPlane } from "../test/controlplane/harness.ts";
import {
  applyRequestFor,
  manifestV8Flags,
  nodeRunnerTlsOptions,
  postToRunner,
  scratchDir,
  signedFor,
  signingKeyDirs,
  startNodeRunner,
} from "../test/support/components.ts";
import { createMeshPod, type MeshPod } from "../test/support/mesh-pods.ts";
import { metricSeries } from "../test/support/metrics.ts";
import { TestPods, testPodsUnavailableReason } from "../test/support/test-pods.ts";
import { idleProcesses, machineDescription, machineIptablesVariant, processCount, shellTimedRestore, summarize, table, Teardown } from "./machine.ts";
import * as k8s from "@kubernetes/client-node";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
if (unavailable !== undefined) {
  console.error(`bench:apply-signed: ${unavailable}`);
  process.exit(1);
}
const { values: flags, positionals } = parseArgs({ allowPositionals: true, options: { processes: { type: "string", default: "0" } } });
const count = Number(positionals[0] ?? "50");
const extraProcesses = Number(flags.processes);
const NODE = "node-a";
const NS = "bench";
const root = path.resolve(import.meta.dirname, "..");
const variant = machineIptablesVariant();

// What the image runs: compiled JavaScript.
execFileSync("npm", ["run", "--silent", "build"], { cwd: root, stdio: "inherit" });
const teardown = new Teardown();
const idle = await idleProcesses(extraProcesses);
teardown.add(() => {
  idle.stop();
});
const cp = await startControlPlane({ log: (l) => process.stderr.write(`${l}\n`) });
teardown.add(() => cp.stop());
const pods = TestPods.create();
teardown.add(() => pods.destroy());
const scratch = scratchDir("bench-apply-signed");
teardown.add(scratch.remove);
// The DaemonSet's state directory is /run/podnet, a tmpfs on a node.
const stateDir = mkdtempSync("/dev/shm/pnct-state-");
teardown.add(() => {
  rmSync(stateDir, { recursive: true, force: true });
});

try {
  await cp.ensureNamespace(NS);
  const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  const keys = signingKeyDirs(scratch.dir, "fn-1");
  const runner = await startNodeRunner(cp, {
    nodeName: NODE,
    publicKeysDir: keys.publicDir,
    stateDir,
    cgroupRoot: pods.cgroupRoot,
    compiled: { nodeArgs: manifestV8Flags().nodeRunner },
  });
  teardown.add(() => runner.stop());
  // The floor's PATCHes are the node-runner's own: its node-bound token, through the admission policy.
  const runnerToken = await cp.serviceAccountToken("podnet-system", "podnet-node-runner", NODE);
  const apiAgent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: cp.ca });
  const runnerAgent = new https.Agent({ keepAlive: true, maxSockets: 1, ...nodeRunnerTlsOptions() });
  teardown.add(() => {
    apiAgent.destroy();
    runnerAgent.destroy();
  });
  const server = new URL(cp.server);

  /** One bare merge patch of a pod's metadata, as the node-runner sends it; its time in ms. */
  function barePatch(pod: MeshPod, metadata: Record<string, unknown>): Promise<number> {
    const body = Buffer.from(JSON.stringify({ metadata: { uid: pod.uid, ...metadata } }));
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          hostname: server.hostname,
          port: server.port,
          path: podPath(pod.namespace, pod.name),
          method: "PATCH",
          agent: apiAgent,
          headers: {
            authorization: `Bearer ${runnerToken}`,
            accept: METADATA_ONLY,
            "content-type": "application/merge-patch+json",
            "content-length": String(body.length),
          },
        },
        (res) => {
          res.resume();
          res.on("end", () => {
            if (res.statusCode !== 200) reject(new Error(`PATCH answered ${res.statusCode ?? 0}`));
            else resolve(performance.now() - t0);
          });
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  }

  const restoreInput = replaceTransaction({}, renderIptables(parseCaptureConfig(DEFAULT_CAPTURE_CONFIG)).v4.rules);

  /** The POST's time from outside, and the node-runner's own (`durationMs` of its answer: from the body read to the answer). */
  async function signedApply(pod: MeshPod): Promise<{ ms: number; ownMs: number }> {
    const { body, headers } = signedFor(
      runner,
      APPLY_PATH,
      applyRequestFor(NODE, { namespace: NS, name: pod.name, uid: pod.uid, ips: [pod.ip] }),
      keys.signingKey,
    );
    const t0 = performance.now();
    const reply = await postToRunner(runner.port, APPLY_PATH, body, headers, runner.host, runnerAgent);
    const ms = performance.now() - t0;
    if (reply.status !== 200 || reply.body.result !== "applied") throw new Error(`apply answered ${reply.status} ${JSON.stringify(reply.body)}`);
    return { ms, ownMs: Number(reply.body.durationMs) };
  }

  /** A signed request the node-runner refuses after its signature, digest, nonce and schema (it names another node): the request's own path. */
  async function signedForAnotherNode(pod: MeshPod): Promise<number> {
    const { body, headers } = signedFor(
      runner,
      APPLY_PATH,
      applyRequestFor("another-node", { namespace: NS, name: pod.name, uid: pod.uid, ips: [pod.ip] }),
      keys.signingKey,
    );
    const t0 = performance.now();
    const reply = await postToRunner(runner.port, APPLY_PATH, body, headers, runner.host, runnerAgent);
    const ms = performance.now() - t0;
    if (reply.body.reason !== "wrong-node") throw new Error(`a request for another node answered ${reply.status} ${JSON.stringify(reply.body)}`);
    return ms;
  }

  const WARM_UP = 10;
  process.stderr.write(`creating ${2 * (count + WARM_UP)} pods `);
  const made: MeshPod[] = [];
  for (let i = 0; i < 2 * (count + WARM_UP); i++) {
    if (i % 20 === 0) process.stderr.write(".");
    made.push(await createMeshPod(core, pods, { namespace: NS, name: `pod-${i}`, nodeName: NODE }));
  }
  process.stderr.write("\n");
  const mark = { ...CLEAR_LEGACY_MARK, [MARK.status]: STATUS_INITIALIZED, [MARK.netns]: "4026532000", [MARK.rules]: "sha256:0", [MARK.reason]: null };
  const applyMs: number[] = [];
  const ownMs: number[] = [];
  const floorMs: number[] = [];
  const restoreMs: number[] = [];
  const patchMs: number[] = [];
  const identityMs: number[] = [];
  const refusedMs: number[] = [];
  const histogramsBefore = await runner.metrics();
  for (let i = 0; i < count + WARM_UP; i++) {
    const [forApply, forFloor] = [made[2 * i], made[2 * i + 1]];
    if (forApply === undefined || forFloor === undefined) throw new Error("missing pod");
    const applied = await signedApply(forApply);
    const refused = await signedForAnotherNode(forApply);
    const restored = shellTimedRestore(variant, `/var/run/netns/${forFloor.sandbox.netns}`, restoreInput);
    // The mark is the floor pod's first patch, as the node-runner's mark is its pod's (a pod's
    // first patch costs the API server about a millisecond more than its next).
    const patched = await barePatch(forFloor, { annotations: mark });
    const identified = await barePatch(forFloor, {});
    if (i < WARM_UP) continue; // connections, JIT and the plan's saved form
    applyMs.push(applied.ms);
    ownMs.push(applied.ownMs);
    restoreMs.push(restored);
    patchMs.push(patched);
    identityMs.push(identified);
    refusedMs.push(refused);
    floorMs.push(restored + patched);
  }
  const histogramsAfter = await runner.metrics();
  const last = made[2 * (count + WARM_UP) - 2];
  if (last !== undefined) {
    const pod = await core.readNamespacedPod({ namespace: NS, name: last.name });
    if (pod.metadata?.annotations?.[MARK.status] !== STATUS_INITIALIZED) throw new Error("the last pod applied is not marked");
  }
  /** A node-runner histogram's mean over the measured applies (warm-up included: the sums cannot tell them apart), in ms. */
  const meanMs = (name: string): string => {
    const total = (text: string, suffix: string): number => metricSeries(text, `${name}_${suffix}`).reduce((sum, s) => sum + s.value, 0);
    const n = total(histogramsAfter, "count") - total(histogramsBefore, "count");
    return n === 0 ? "—" : (((total(histogramsAfter, "sum") - total(histogramsBefore, "sum")) * 1000) / n).toFixed(2);
  };
  const row = (name: string, samples: number[]): (string | number)[] => {
    const s = summarize(samples);
    return [name, String(samples.length), s.min, s.median, s.p95, s.max];
  };
  const median = (xs: number[]): number => summarize(xs).median;
  console.log(machineDescription());
  console.log(
    `Istio default capture config, IPv4; ${variant}; ${processCount()} processes on the machine; node-runner compiled with ${manifestV8Flags().nodeRunner.join(" ")}; after ${WARM_UP} of each to warm up; times in ms per pod\n`,
  );
  console.log(
    table(
      ["measured", "pods", "min", "median", "p95", "max"],
      [
        row("floor: the restore from a shell + one bare PATCH of the mark", floorMs),
        row("  the restore: nsenter + iptables-restore of the same rules, from a shell", restoreMs),
        row("  one bare PATCH of the mark (the node-runner's token, kept-alive connection)", patchMs),
        row("node-runner: signed POST /v1/apply → 200, rules in place and the pod marked", applyMs),
        row("  of which the node-runner's own (its answer's durationMs: body read → answer)", ownMs),
        row("  the request alone: one refused after signature, digest, nonce, schema (another node's)", refusedMs),
        row("  the identity check's bare PATCH (nothing but the UID; the floor pod's second patch)", identityMs),
      ],
    ),
  );
  console.log(
    `\nnode-runner's own histograms (means): netns resolution ${meanMs("podnet_node_runner_netns_resolution_duration_seconds")} ms, the apply engine ${meanMs("podnet_node_runner_apply_duration_seconds")} ms`,
  );
  console.log(`node-runner / floor (medians): ${(median(applyMs) / median(floorMs)).toFixed(2)}× (target ≤ 1.3×)`);
} finally {
  await teardown.run();
}
