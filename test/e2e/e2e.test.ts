// End to end on the real control plane (docs/architecture.md §2, §10): pods created through the API server
// → Knative's real ApiServerSource adapter → the function → the node-runner (its own
// ServiceAccount, node-bound token, under RBAC and the admission policy) → rules in real test
// pods → the mark → the waiter exits 0 and traffic proves interception.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { writeAnnotationsFile } from "../support/downward-api.ts";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../../contract/mark.ts";
import { WAITER_CONTAINER } from "../../functions/decision.ts";
import { missingBinariesReason } from "../controlplane/harness.ts";
import { apiServerSourceEvent, deliver, pingEvent } from "../support/apiserversource.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { waitForAnnotations, waitForPodEvent, type MeshPod } from "../support/mesh-pods.ts";
import { startStack, STACK_NODE, type Stack } from "../support/stack.ts";
import { testPodsUnavailableReason } from "../support/test-pods.ts";
import { connectFrom, startListener } from "../support/traffic.ts";
import { goProgram, goProgramsUnavailableReason } from "../support/go-programs.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason() ?? goProgramsUnavailableReason();
const NS = "shop";
const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);
const initialized = (a: Record<string, string>) => a[MARK.status] === STATUS_INITIALIZED;

const outcome = (r: { body: Record<string, unknown> }): string | undefined => (r.body as { results?: { outcome: string }[] }).results?.[0]?.outcome;

describe("end to end [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let stack: Stack;
  const ping = (url: string) => deliver(url, pingEvent(), stack.tokens.resync);
  let early: MeshPod;

  before(async () => {
    assertAvailable(unavailable);
    stack = await startStack({ withAdapter: false });
    // Exists before the event source starts: no event will ever come for it.
    early = await stack.createPod({ namespace: NS, name: "early" });
    await stack.startAdapter();
  });
  after(async () => {
    await stack.stop();
  });

  test("a mesh pod is programmed and marked; its waiter exits 0; traffic is intercepted", async () => {
    const pod = await stack.createPod({ namespace: NS, name: "web-1" });
    const annotations = await waitForAnnotations(stack.core, pod, initialized);
    assert.equal(annotations[MARK.netns], pod.sandbox.netnsInode());
    // The waiter, as the pod's init container would run it: UID 1337, no capabilities.
    const file = path.join("/tmp", `pnct-annotations-${pod.uid}`);
    writeAnnotationsFile(file, annotations);
    const waiter = pod.sandbox.spawn([goProgram("podnet-wait"), `--annotations=${file}`, "--timeout=20", "--termination-log=/dev/null"], { uid: 1337 });
    const code = await new Promise<number | null>((resolve) => waiter.once("exit", resolve));
    rmSync(file, { force: true });
    assert.equal(code, 0);
    const envoy = await startListener(pod.sandbox, 15001, "envoy");
    const answer = connectFrom(pod.sandbox, "203.0.113.9", 443, 1000);
    envoy.kill();
    assert.equal(answer, "envoy", "the app's outbound connection landed on Envoy's port");
  });

  test("non-mesh, hostNetwork, excluded-namespace and invalid pods are left alone (the last with an Event)", async () => {
    const plain = await stack.createPod({ namespace: NS, name: "plain", injected: false });
    const hostNet = await stack.createPod({ namespace: NS, name: "hostnet", hostNetwork: true });
    const system = await stack.createPod({ namespace: "kube-system", name: "system" });
    const sneaky = await stack.createPod({ namespace: NS, name: "sneaky", annotations: { "traffic.sidecar.istio.io/excludeOutboundPorts": "99999" } });
    const marker = await stack.createPod({ namespace: NS, name: "marker" });
    await waitForAnnotations(stack.core, marker, initialized); // events are in order: the others were handled before
    for (const p of [plain, hostNet, system, sneaky]) {
      // The hostNetwork pod's namespace is the node's (here the test's): read, never written.
      const rules = p === hostNet ? execFileSync("iptables-save", { encoding: "utf8" }) : p.sandbox.exec(["iptables-save"]);
      assert.doesNotMatch(rules, /ISTIO/, `${p.name}: no rules`);
      const a = (await stack.core.readNamespacedPod({ namespace: p.namespace, name: p.name })).metadata?.annotations ?? {};
      assert.equal(a[MARK.status], undefined, `${p.name}: not marked`);
    }
    assert.match((await waitForPodEvent(stack.core, sneaky, "NetworkInitFailed")).message ?? "", /traffic\.sidecar\.istio\.io\/excludeOutboundPorts: "99999"/);
  });

  test("a pod that existed before the event source started is initialized by the resync", async () => {
    assert.equal((await stack.core.readNamespacedPod({ namespace: NS, name: "early" })).metadata?.annotations?.[MARK.status], undefined);
    assert.equal((await ping(`${stack.fn.url}/`)).status, 200);
    await waitForAnnotations(stack.core, early, initialized);
  });

  test("a node-runner that is down while events arrive is caught up after it returns", async () => {
    await stack.runner.stop();
    const pod = await stack.createPod({ namespace: NS, name: "while-down" });
    await stack.fn.waitForLog(/"name":"while-down".*"msg":"dispatch failed"/, 15_000);
    await stack.restartNodeRunner();
    await ping(`${stack.fn.url}/`);
    await waitForAnnotations(stack.core, pod, initialized);
  });

  test("a policy change takes effect for new pods without restarting the node-runner", async () => {
    const runnerPid = stack.runner.process.pid;
    writeFileSync(stack.policyFile, "mode: enforce\nnamespaces:\n  exclude: [kube-system, istio-system, shop]\n");
    await stack.fn.waitForLog(/"msg":"policy reloaded"/);
    const pod = await stack.createPod({ namespace: NS, name: "after-policy" });
    // Events arrive in order: once a later pod elsewhere is marked, this one was decided.
    const marker = await stack.createPod({ namespace: "shop-marker", name: "marker-after-policy" });
    await waitForAnnotations(stack.core, marker, initialized);
    assert.doesNotMatch(pod.sandbox.exec(["iptables-save"]), /ISTIO/);
    assert.equal((await stack.core.readNamespacedPod({ namespace: NS, name: pod.name })).metadata?.annotations?.[MARK.status], undefined);
    assert.equal(stack.runner.process.pid, runnerPid);
    writeFileSync(stack.policyFile, "mode: enforce\n");
    await stack.fn.waitForLog(/"msg":"policy reloaded"[\s\S]*"msg":"policy reloaded"/);
    await ping(`${stack.fn.url}/`);
    await waitForAnnotations(stack.core, pod, initialized);
  });

  test("a sandbox re-created under the same pod UID is re-programmed", async () => {
    const pod = await stack.createPod({ namespace: NS, name: "recreated" });
    const first = await waitForAnnotations(stack.core, pod, initialized);
    await stack.pods.removePod(pod.sandbox);
    const sandbox = stack.pods.add({ name: pod.name, uid: pod.uid });
    // What kubelet reports: the new sandbox's IP, and the waiter still running long after the mark.
    await stack.core.patchNamespacedPodStatus(
      {
        namespace: NS,
        name: pod.name,
        body: {
          status: {
            podIP: sandbox.ip,
            podIPs: [{ ip: sandbox.ip }],
            initContainerStatuses: [
              {
                name: WAITER_CONTAINER,
                image: "podnet",
                imageID: "",
                ready: false,
                restartCount: 1,
                state: { running: { startedAt: new Date(Date.now() - 120_000) } },
              },
            ],
          },
        },
      },
      merge,
    );
    const second = await waitForAnnotations(stack.core, pod, (a) => a[MARK.netns] === sandbox.netnsInode());
    assert.notEqual(second[MARK.netns], first[MARK.netns]);
    assert.match(sandbox.exec(["iptables-save"]), /-A ISTIO_OUTPUT -j ISTIO_REDIRECT/);
  });

  test("duplicate and out-of-order events cause no double work and no wrong state", async () => {
    const pod = await stack.createPod({ namespace: NS, name: "replayed" });
    const marked = await waitForAnnotations(stack.core, pod, initialized);
    const current = JSON.parse(JSON.stringify(await stack.core.readNamespacedPod({ namespace: NS, name: pod.name }))) as {
      metadata: { namespace: string; name: string; resourceVersion: string; annotations: Record<string, string> };
    };
    const event = apiServerSourceEvent("update", current);
    await deliver(`${stack.fn.url}/`, event, stack.tokens.pods);
    const again = await deliver(`${stack.fn.url}/`, event, stack.tokens.pods);
    assert.equal(outcome(again), "duplicate");
    // An older state (before the mark) arriving late: the node finds the rules in place.
    const unmarked = Object.fromEntries(Object.entries(current.metadata.annotations).filter(([k]) => !Object.values(MARK).includes(k as never)));
    const stale = { ...current, metadata: { ...current.metadata, resourceVersion: "1", annotations: unmarked } };
    const late = await deliver(`${stack.fn.url}/`, apiServerSourceEvent("update", stale), stack.tokens.pods);
    // The event is only a trigger: the pod read from the API server is marked, so nothing is sent.
    assert.equal(outcome(late), "skipped");
    const after = (await stack.core.readNamespacedPod({ namespace: NS, name: pod.name })).metadata?.annotations ?? {};
    assert.deepEqual([after[MARK.netns], after[MARK.rules]], [marked[MARK.netns], marked[MARK.rules]]);
    assert.equal(stack.runner.log().match(new RegExp(`"name":"replayed"[^\\n]*"result":"applied"`, "g"))?.length, 1, "applied exactly once");
  });

  test("the node-runner's marks went through the admission policy with its node-bound token", async () => {
    const pod = await stack.core.readNamespacedPod({ namespace: NS, name: "web-1" });
    assert.equal(pod.spec?.nodeName, STACK_NODE);
    await assert.rejects(
      stack.core.patchNamespacedPod({ namespace: NS, name: "plain", body: { metadata: { annotations: { [MARK.status]: STATUS_INITIALIZED } } } }, merge),
      (err: unknown) => err instanceof k8s.ApiException && err.code === 403,
    );
  });
});
