// The waiter (the Go binary its image runs) in a real test pod: UID 1337, no capabilities (nsenter drops them with the UID),
// after a real node-runner apply and the pod's real annotations, copied into the downward API
// file the way kubelet writes it.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { APPLY_PATH } from "../../contract/apply-request.ts";
import { DEFAULT_CAPTURE_CONFIG } from "../../contract/capture-config.ts";
import { LEGACY_MARK, MARK, STATUS_INITIALIZED, STATUS_SKIPPED } from "../../contract/mark.ts";
import { missingBinariesReason, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { applyRequestFor, scratchDir, sendSigned, signingKeyDirs, startNodeRunner, type Component } from "../support/components.ts";
import { writeAnnotationsFile } from "../support/downward-api.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { createMeshPod, type MeshPod } from "../support/mesh-pods.ts";
import { TestPods, testPodsUnavailableReason } from "../support/test-pods.ts";
import { WAIT_EXIT, goProgram, goProgramsUnavailableReason } from "../support/go-programs.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason() ?? goProgramsUnavailableReason();
const NODE = "node-a";
const NS = "shop";

describe("waiter init container [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let cp: ControlPlane;
  let pods: TestPods;
  let scratch: ReturnType<typeof scratchDir>;
  let keys: ReturnType<typeof signingKeyDirs>;
  let runner: Component;
  let core: k8s.CoreV1Api;
  let seq = 0;

  before(async () => {
    assertAvailable(unavailable);
    cp = await startControlPlane();
    pods = TestPods.create();
    scratch = scratchDir("wait");
    chmodSync(scratch.dir, 0o755);
    keys = signingKeyDirs(scratch.dir);
    await cp.ensureNamespace(NS);
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    runner = await startNodeRunner(cp, {
      nodeName: NODE,
      publicKeysDir: keys.publicDir,
      stateDir: path.join(scratch.dir, "state"),
      cgroupRoot: pods.cgroupRoot,
    });
  });
  after(async () => {
    await runner.stop();
    await pods.destroy();
    await cp.stop();
    scratch.remove();
  });

  /** A downward API directory as kubelet provides it, readable by UID 1337. */
  function podinfo(): { dir: string; file: string; terminationLog: string } {
    const dir = path.join(scratch.dir, `podinfo-${++seq}`);
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o777);
    const terminationLog = path.join(dir, "termination-log");
    writeFileSync(terminationLog, "", { mode: 0o666 });
    chmodSync(terminationLog, 0o666);
    return { dir, file: path.join(dir, "annotations"), terminationLog };
  }

  async function copyFromApi(pod: MeshPod, file: string): Promise<void> {
    const p = await core.readNamespacedPod({ namespace: pod.namespace, name: pod.name });
    writeAnnotationsFile(file, p.metadata?.annotations ?? {});
  }

  function startWaiter(
    pod: MeshPod,
    info: ReturnType<typeof podinfo>,
    extra: string[] = [],
  ): { child: ChildProcess; exit: Promise<{ code: number; at: number; stderr: string }> } {
    const child = pod.sandbox.spawn(
      [goProgram("podnet-wait"), `--annotations=${info.file}`, `--termination-log=${info.terminationLog}`, "--poll=200", ...extra],
      { uid: 1337, gid: 1337 },
    );
    let stderr = "";
    child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
    const exit = new Promise<{ code: number; at: number; stderr: string }>((resolve) => {
      child.once("exit", (code) => {
        resolve({ code: code ?? -1, at: performance.now(), stderr });
      });
    });
    return { child, exit };
  }

  const apply = (pod: MeshPod, capture: object = DEFAULT_CAPTURE_CONFIG) =>
    sendSigned(runner, APPLY_PATH, applyRequestFor(NODE, { namespace: NS, name: pod.name, uid: pod.uid, ips: [pod.ip] }, capture), keys.signingKey);

  test("waits while nothing is applied; exits 0 once the rules work, without waiting for the kubelet's annotation file", async (t) => {
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "web-1", nodeName: NODE });
    const info = podinfo();
    await copyFromApi(pod, info.file);
    const waiter = startWaiter(pod, info);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(waiter.child.exitCode, null, "still waiting before the rules");
    const sent = performance.now();
    assert.equal((await apply(pod)).status, 200);
    const applied = performance.now();
    // The annotations file is not refreshed here, as a kubelet may take its time to.
    const done = await waiter.exit;
    assert.equal(done.code, WAIT_EXIT.ok, done.stderr);
    assert.match(done.stderr, /interception verified \(before the mark reached this pod\)/);
    t.diagnostic(`apply answered → waiter exit: ${(done.at - applied).toFixed(0)} ms (apply request ${(applied - sent).toFixed(0)} ms)`);
  });

  // Issue 14: the probe is the signal for every capture Istio configures. Istio's loopback rule
  // (the proxy's own connection to a non-127.0.0.1 loopback address → the inbound capture port)
  // is rendered whatever the inbound and outbound settings, in both interception modes.
  // The pod's annotations as Istio's injector writes them (CNI mode), in the downward API file.
  const captures: [string, object, Record<string, string>?][] = [
    ["outbound only (no inbound port captured)", { inboundPortsInclude: "" }],
    ["inbound only (no outbound range captured)", { outboundIPRangesInclude: "" }],
    ["TPROXY inbound", { inboundInterceptionMode: "TPROXY" }],
    ["IPv6 rules too", { enableIPv6: true }],
    ["DNS captured", { redirectDNS: true, captureAllDNS: true, dnsServersV4: ["10.96.0.10"] }],
    [
      "the probe's port excluded from outbound capture",
      { outboundPortsExclude: "15999,15998" },
      { "traffic.sidecar.istio.io/excludeOutboundPorts": "15999,15998" },
    ],
    ["virtual interfaces rerouted, an interface excluded", { rerouteVirtualInterfaces: "tun0", excludeInterfaces: "eth9" }],
  ];
  for (const [what, overrides, annotations] of captures) {
    test(`the probe proves interception: ${what}`, async () => {
      const pod = await createMeshPod(core, pods, { namespace: NS, name: `capture-${++seq}`, nodeName: NODE });
      const info = podinfo();
      if (annotations !== undefined) writeAnnotationsFile(info.file, annotations);
      const waiter = startWaiter(pod, info, ["--timeout=20"]);
      assert.equal((await apply(pod, { ...DEFAULT_CAPTURE_CONFIG, ...overrides })).status, 200);
      const done = await waiter.exit;
      assert.equal(done.code, WAIT_EXIT.ok, done.stderr);
      assert.match(done.stderr, /interception verified/);
    });
  }

  // The old mark is under its legacy names, as an older node-runner wrote it: read during an
  // upgrade; the new node-runner's mark replaces it.
  test("keeps waiting while the mark (legacy names) names another netns (sandbox re-created); exits 0 once re-programmed", async () => {
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "recreated", nodeName: NODE });
    const info = podinfo();
    writeAnnotationsFile(info.file, { [LEGACY_MARK.status]: STATUS_INITIALIZED, [LEGACY_MARK.netns]: "4026530000" });
    const waiter = startWaiter(pod, info);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(waiter.child.exitCode, null, "a mark for another netns is not enough");
    assert.equal((await apply(pod)).status, 200);
    await copyFromApi(pod, info.file);
    const done = await waiter.exit;
    assert.equal(done.code, WAIT_EXIT.ok, done.stderr);
    assert.match(done.stderr, /another network namespace/);
  });

  test("a pod the policy keeps out of the mesh (marked skipped) starts at once, without rules: exit 0 with the reason", async () => {
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "skipped", nodeName: NODE });
    const info = podinfo();
    writeAnnotationsFile(info.file, { [MARK.status]: STATUS_SKIPPED, [MARK.reason]: "the policy skips this pod (namespace-excluded: knative-serving)" });
    const done = await startWaiter(pod, info).exit;
    assert.equal(done.code, WAIT_EXIT.ok, done.stderr);
    assert.equal(readFileSync(info.terminationLog, "utf8"), "not meshed: the policy skips this pod (namespace-excluded: knative-serving)\n");
  });

  test("a spoofed mark without rules ends in the probe-failure code, with the reason in the termination log", async () => {
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "spoofed", nodeName: NODE });
    const info = podinfo();
    writeAnnotationsFile(info.file, { [MARK.status]: STATUS_INITIALIZED, [MARK.netns]: pod.sandbox.netnsInode() });
    const done = await startWaiter(pod, info).exit;
    assert.equal(done.code, WAIT_EXIT.probeFailed, done.stderr);
    assert.match(readFileSync(info.terminationLog, "utf8"), /^marked initialized but interception does not work: .*not redirected/);
  });

  const broken: [string, string][] = [
    ["truncated", `${MARK.status}="initial`],
    ["garbled", "\u0000\u00ff\u0001=\n==="],
    ["oversize", `big="${"x".repeat(1100 * 1024)}"\n`],
  ];
  for (const [what, content] of broken) {
    test(`a ${what} annotations file ends in the bad-annotations code, never a crash`, async () => {
      const pod = await createMeshPod(core, pods, { namespace: NS, name: `broken-${what}`, nodeName: NODE });
      const info = podinfo();
      writeFileSync(info.file, content, { mode: 0o644 });
      const done = await startWaiter(pod, info).exit;
      assert.equal(done.code, WAIT_EXIT.badAnnotations, done.stderr);
      assert.match(readFileSync(info.terminationLog, "utf8"), /annotations file/);
    });
  }

  test("timeout: its own code and the reason in the termination log", async () => {
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "never", nodeName: NODE });
    const info = podinfo();
    const done = await startWaiter(pod, info, ["--timeout=1"]).exit;
    assert.equal(done.code, WAIT_EXIT.timeout, done.stderr);
    assert.match(readFileSync(info.terminationLog, "utf8"), /^timed out after 1000 ms/);
  });
});
