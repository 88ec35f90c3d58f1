// The decision function with everything real around it: Knative's ApiServerSource adapter
// sending events, a node-runner on loopback verifying the signatures and programming real test
// pods, the kube-apiserver with each component's own ServiceAccount.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { MARK, readMark, STATUS_INITIALIZED, STATUS_SKIPPED } from "../../contract/mark.ts";
import { deliver, pingEvent } from "../support/apiserversource.ts";
import { missingBinariesReason, startControlPlane, type Adapter, type ControlPlane } from "../controlplane/harness.ts";
import { FUNCTION_AUDIENCE, scratchDir, senderToken, signingKeyDirs, startFunction, startNodeRunner, type Component } from "../support/components.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { createMeshPod, waitForAnnotations, waitForPodEvent } from "../support/mesh-pods.ts";
import { metricSum } from "../support/metrics.ts";
import { TestPods, testPodsUnavailableReason } from "../support/test-pods.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
const NODE = "node-a";
const NS = "shop";

describe("decision function end to end [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let cp: ControlPlane;
  let pods: TestPods;
  let scratch: ReturnType<typeof scratchDir>;
  let keys: ReturnType<typeof signingKeyDirs>;
  let runner: Component;
  let fn: Component;
  let adapter: Adapter;
  let core: k8s.CoreV1Api;
  let policyFile: string;

  before(async () => {
    assertAvailable(unavailable);
    cp = await startControlPlane();
    pods = TestPods.create();
    scratch = scratchDir("fn");
    keys = signingKeyDirs(scratch.dir);
    policyFile = path.join(scratch.dir, "policy.yaml");
    writeFileSync(policyFile, "mode: enforce\nrevision: r1\n");
    await cp.ensureNamespace(NS);
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    runner = await startNodeRunner(cp, {
      nodeName: NODE,
      publicKeysDir: keys.publicDir,
      stateDir: path.join(scratch.dir, "state"),
      cgroupRoot: pods.cgroupRoot,
    });
    // No redispatch: the resync is what this suite proves catches a node-runner that was down.
    fn = await startFunction(cp, { signingKeysDir: keys.privateDir, policyFile, nodeRunnerPort: runner.port, env: { DISPATCH_RETRY_DELAYS_MS: "100" } });
    adapter = await cp.startAdapter({ sink: `${fn.url}/`, labelSelector: "security.istio.io/tlsMode=istio", audience: FUNCTION_AUDIENCE });
  });

  const functionMetrics = (): Promise<string> => fn.metrics();

  after(async () => {
    await adapter.stop();
    await fn.stop();
    await runner.stop();
    await pods.destroy();
    await cp.stop();
    scratch.remove();
  });

  test("a pod created through the API is programmed and marked, through the real event source", async () => {
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "web-1", nodeName: NODE });
    const annotations = await waitForAnnotations(core, pod, (a) => a[MARK.status] === STATUS_INITIALIZED);
    assert.equal(annotations[MARK.netns], pod.sandbox.netnsInode());
    assert.match(pod.sandbox.exec(["iptables-save"]), /-A ISTIO_OUTPUT -j ISTIO_REDIRECT/);
    await fn.waitForLog(/"msg":"dispatched: applied"/);
    assert.match(fn.log(), /"policy":"r1@sha256:/);
  });

  test("Knative's adapter keeps its connection to the function: events per pod, not connections", async () => {
    const before = await functionMetrics();
    for (const name of ["kept-1", "kept-2", "kept-3"]) {
      const pod = await createMeshPod(core, pods, { namespace: NS, name, nodeName: NODE });
      await waitForAnnotations(core, pod, (a) => a[MARK.status] === STATUS_INITIALIZED);
    }
    await fn.waitForLog(/"name":"kept-3".*"msg":"dispatched: applied"/);
    const after = await functionMetrics();
    const delta = (name: string) => metricSum(after, name) - metricSum(before, name);
    assert.ok(delta("podnet_function_events_total") >= 6, `events: ${delta("podnet_function_events_total")}`);
    // A 2xx answer with a body made the adapter's Go client drop the connection: one per event.
    assert.ok(delta("podnet_function_http_connections_total") <= 1, `new connections: ${delta("podnet_function_http_connections_total")}`);
  });

  test("invalid annotations: nothing applied, a NetworkInitFailed Event names the annotation", async () => {
    const pod = await createMeshPod(core, pods, {
      namespace: NS,
      name: "sneaky",
      nodeName: NODE,
      annotations: { "traffic.sidecar.istio.io/excludeInterfaces": "eth0 -j ACCEPT" },
    });
    const event = await waitForPodEvent(core, pod, "NetworkInitFailed", 10_000);
    assert.match(event.message ?? "", /annotation traffic\.sidecar\.istio\.io\/excludeInterfaces: "eth0 -j ACCEPT" is invalid/);
    assert.doesNotMatch(pod.sandbox.exec(["iptables-save"]), /ISTIO/);
  });

  test("a node-runner that was down is caught up by the resync after it returns", async () => {
    await runner.stop();
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "late", nodeName: NODE });
    await fn.waitForLog(/"msg":"dispatch failed"/, 10_000);
    runner = await startNodeRunner(cp, {
      nodeName: NODE,
      publicKeysDir: keys.publicDir,
      stateDir: path.join(scratch.dir, "state"),
      cgroupRoot: pods.cgroupRoot,
      port: runner.port,
    });
    const res = await deliver(`${fn.url}/`, pingEvent(), await senderToken(cp, "PingSource"));
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const summary = (res.body as { resync: { seen: number; queued: number; failed: number } }).resync;
    assert.ok(summary.seen >= 3 && summary.queued >= 1 && summary.failed === 0, JSON.stringify(res.body));
    await waitForAnnotations(core, pod, (a) => a[MARK.status] === STATUS_INITIALIZED);
  });

  test("policy: an invalid document is refused and the last good one stays; a dry-run policy applies nothing", async () => {
    writeFileSync(policyFile, "mode: sometimes\n");
    await fn.waitForLog(/policy refused; keeping the last good one/);
    writeFileSync(policyFile, "mode: dry-run\nrevision: r2\n");
    await fn.waitForLog(/"to":"r2@sha256:[0-9a-f]+","mode":"dry-run","msg":"policy reloaded"/);
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "observed", nodeName: NODE });
    await fn.waitForLog(/"name":"observed".*"msg":"dry-run: would apply"/, 10_000);
    assert.doesNotMatch(pod.sandbox.exec(["iptables-save"]), /ISTIO/);
    const metrics = await functionMetrics();
    assert.match(metrics, /podnet_function_policy_reload_failures_total 1/);
    assert.match(metrics, /podnet_function_policy_info\{id="r2@sha256:[0-9a-f]+",mode="dry-run"\} 1/);
  });

  test("Reference mode: the function reads the pod the event refers to", async () => {
    writeFileSync(policyFile, "mode: enforce\nrevision: r3\n");
    await fn.waitForLog(/"to":"r3@sha256:[0-9a-f]+","mode":"enforce"/);
    await adapter.stop();
    adapter = await cp.startAdapter({ sink: `${fn.url}/`, labelSelector: "security.istio.io/tlsMode=istio", mode: "Reference", audience: FUNCTION_AUDIENCE });
    const pod = await createMeshPod(core, pods, { namespace: NS, name: "by-reference", nodeName: NODE });
    await waitForAnnotations(core, pod, (a) => a[MARK.status] === STATUS_INITIALIZED);
    await fn.waitForLog(/"ceType":"dev\.knative\.apiserver\.ref\.(add|update)".*"name":"by-reference".*"msg":"dispatched: applied"/);
  });

  test("fail-open, the incident switch: a pod already waiting is released at once (the mode change runs a resync), so is a new one; a pod with rules keeps them; back to enforce, pods are programmed again", async () => {
    writeFileSync(policyFile, "mode: dry-run\nrevision: r4\n");
    await fn.waitForLog(/"to":"r4@sha256:[0-9a-f]+","mode":"dry-run"/);
    const held = await createMeshPod(core, pods, { namespace: NS, name: "held", nodeName: NODE, waiter: true });
    await fn.waitForLog(/"name":"held".*"msg":"dry-run: would apply"/, 10_000);

    writeFileSync(policyFile, "mode: fail-open\nrevision: r5\n");
    await fn.waitForLog(/"mode":"fail-open".*"msg":"resync after a policy mode change"/);
    const released = { status: STATUS_SKIPPED, reason: "the policy's incident switch is on (mode: fail-open)" };
    assert.deepEqual(readMark(await waitForAnnotations(core, held, (a) => a[MARK.status] === STATUS_SKIPPED)), released);
    const during = await createMeshPod(core, pods, { namespace: NS, name: "during", nodeName: NODE, waiter: true });
    assert.deepEqual(readMark(await waitForAnnotations(core, during, (a) => a[MARK.status] === STATUS_SKIPPED)), released);
    for (const pod of [held, during]) assert.doesNotMatch(pod.sandbox.exec(["iptables-save"]), /ISTIO/, `${pod.name}: no rules`);
    const kept = (await core.readNamespacedPod({ namespace: NS, name: "web-1" })).metadata?.annotations ?? {};
    assert.equal(kept[MARK.status], STATUS_INITIALIZED, "a pod with rules keeps them");
    assert.match(await functionMetrics(), /podnet_function_policy_info\{id="r5@sha256:[0-9a-f]+",mode="fail-open"\} 1/);
    assert.match(await functionMetrics(), /podnet_function_decisions_total\{action="release",reason="fail-open"\} [1-9]/);

    writeFileSync(policyFile, "mode: enforce\nrevision: r6\n");
    await fn.waitForLog(/"to":"r6@sha256:[0-9a-f]+","mode":"enforce"/);
    const after = await createMeshPod(core, pods, { namespace: NS, name: "after", nodeName: NODE, waiter: true });
    await waitForAnnotations(core, after, (a) => a[MARK.status] === STATUS_INITIALIZED);
    assert.match(after.sandbox.exec(["iptables-save"]), /ISTIO_REDIRECT/);
  });

  test("SIGTERM: the function drains and exits 0", async () => {
    await adapter.stop();
    await fn.stop();
    assert.equal(fn.process.exitCode, 0);
    assert.match(fn.log(), /"msg":"drained"/);
  });
});
