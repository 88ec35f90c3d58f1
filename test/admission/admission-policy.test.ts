// config/admission/: the ValidatingAdmissionPolicy, enforced for real by the kube-apiserver,
// with the node-runner's own code path (KubePodApi) and a node-bound ServiceAccount token.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { LEGACY_MARK, MARK, readMark, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../../contract/mark.ts";
import { KubePodApi, METADATA_ONLY } from "../../node-runner/kube.ts";
import { ApiError, apiRequest, podPath, type ApiConnection } from "../../lib/kube-http.ts";
import { missingBinariesReason, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { clearMarkAs, installAdmissionPolicies } from "../support/components.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";

const root = path.resolve(import.meta.dirname, "../..");
const missing = missingBinariesReason();
const NS = "shop";
const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);

/** Refused by the admission policy, through the client library (users) or the node-runner's own client. */
const forbidden = (pattern: RegExp) => (err: unknown) =>
  (err instanceof k8s.ApiException || err instanceof ApiError) && err.code === 403 && pattern.test(err.message);

// The policy is YAML with CEL; the names are defined once, in contract/mark.ts: every one of them,
// current and legacy, is among the marks the policy protects.
test("the admission policy protects every name of the mark in contract/mark.ts, current and legacy", () => {
  const policy = parseAllDocuments(readFileSync(path.join(root, "config/admission/podnet-annotations.yaml"), "utf8"))[0]?.toJS() as {
    spec: { variables: { name: string; expression: string }[] };
  };
  const marks = policy.spec.variables.find((v) => v.name === "marks")?.expression ?? "";
  const listed = [...marks.matchAll(/'([^']+)'/g)].map((m) => m[1]).sort();
  assert.deepEqual(listed, [...Object.values(MARK), ...Object.values(LEGACY_MARK)].sort());
});

describe("admission policy for the project's annotations [needs control plane]", skipUnlessCI(missing), () => {
  let cp: ControlPlane;
  let admin: k8s.CoreV1Api;
  let runnerA: KubePodApi;
  let runnerConnection: ApiConnection;
  let runnerCore: k8s.CoreV1Api;
  const pods: Record<string, { namespace: string; name: string; uid: string; ips: string[] }> = {};

  before(async () => {
    assertAvailable(missing);
    cp = await startControlPlane();
    await cp.applyManifest(path.join(root, "config/node-runner/rbac.yaml"));
    await cp.ensureNamespace(NS);
    admin = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    const token = await cp.serviceAccountToken("podnet-system", "podnet-node-runner", "node-a");
    runnerConnection = { server: new URL(cp.server), ca: cp.ca, token: () => token };
    runnerA = new KubePodApi(runnerConnection, "node-a");
    runnerCore = cp.kubeConfig(token).makeApiClient(k8s.CoreV1Api);
    for (const [name, node] of [
      ["on-a", "node-a"],
      ["on-b", "node-b"],
      ["users", "node-a"],
    ] as const) {
      const p = await admin.createNamespacedPod({
        namespace: NS,
        body: { metadata: { name }, spec: { nodeName: node, containers: [{ name: "app", image: "example/app" }] } },
      });
      pods[name] = { namespace: NS, name, uid: p.metadata?.uid ?? "", ips: ["10.0.0.2"] };
    }
    // Waits until the API server enforces them: a probe of its own (dry run, a new pod), so
    // that no mark is left behind on these pods if a real patch passed just before.
    await installAdmissionPolicies(cp);
  });
  after(async () => {
    await cp.stop();
  });

  const pod = (name: string) => {
    const p = pods[name];
    assert.ok(p !== undefined);
    return p;
  };

  test("a user (even cluster-admin) cannot set the mark, under its names or its legacy ones", async () => {
    for (const key of [MARK.status, LEGACY_MARK.status, LEGACY_MARK.netns]) {
      await assert.rejects(
        admin.patchNamespacedPod({ namespace: NS, name: "users", body: { metadata: { annotations: { [key]: "initialized" } } } }, merge),
        forbidden(/only the podnet node-runner may set/),
        key,
      );
    }
  });

  // The other ways annotations reach a pod (issue 16, item 7).
  test("the mark cannot be set through pods/status", async () => {
    await assert.rejects(
      admin.patchNamespacedPodStatus({ namespace: NS, name: "users", body: { metadata: { annotations: { [MARK.status]: "initialized" } } } }, merge),
      forbidden(/through pods\/status or a binding/),
    );
    const after = await admin.readNamespacedPod({ namespace: NS, name: "users" });
    assert.equal(after.metadata?.annotations?.[MARK.status], undefined);
  });

  test("ordinary status updates still pass", async () => {
    await admin.patchNamespacedPodStatus({ namespace: NS, name: "users", body: { status: { podIP: "10.0.0.9", podIPs: [{ ip: "10.0.0.9" }] } } }, merge);
    assert.equal((await admin.readNamespacedPod({ namespace: NS, name: "users" })).status?.podIP, "10.0.0.9");
  });

  test("the mark cannot come in with a binding (annotations are copied onto the pod); a plain binding passes", async () => {
    for (const name of ["unbound-1", "unbound-2"]) {
      await admin.createNamespacedPod({ namespace: NS, body: { metadata: { name }, spec: { containers: [{ name: "app", image: "example/app" }] } } });
    }
    await assert.rejects(
      admin.createNamespacedBinding({
        namespace: NS,
        body: { metadata: { name: "unbound-1", annotations: { [MARK.status]: "initialized" } }, target: { kind: "Node", name: "node-a" } },
      }),
      forbidden(/through pods\/status or a binding/),
    );
    const unbound = await admin.readNamespacedPod({ namespace: NS, name: "unbound-1" });
    assert.equal(unbound.metadata?.annotations?.[MARK.status], undefined);
    assert.equal(unbound.spec?.nodeName, undefined);
    await admin.createNamespacedBinding({ namespace: NS, body: { metadata: { name: "unbound-2" }, target: { kind: "Node", name: "node-a" } } });
    assert.equal((await admin.readNamespacedPod({ namespace: NS, name: "unbound-2" })).spec?.nodeName, "node-a");
  });

  test("nobody can create a pod that is already marked", async () => {
    await assert.rejects(
      admin.createNamespacedPod({
        namespace: NS,
        body: { metadata: { name: "premarked", annotations: { [MARK.status]: "initialized" } }, spec: { containers: [{ name: "app", image: "example/app" }] } },
      }),
      forbidden(/only the podnet node-runner may set/),
    );
  });

  test("the node-runner marks a pod bound to its own node (its real code path)", async () => {
    await runnerA.markInitialized(pod("on-a"), { netns: "4026532246", rules: "0123456789abcdef" });
    const marked = await admin.readNamespacedPod({ namespace: NS, name: "on-a" });
    assert.equal(marked.metadata?.annotations?.[MARK.netns], "4026532246");
    await clearMarkAs(runnerCore, { namespace: NS, name: "on-a" });
  });

  // An upgrade: the pod carries the mark an older node-runner wrote under the legacy names.
  test("a pod marked under the legacy names (an older node-runner): the node-runner's mark replaces it and removes them", async () => {
    await runnerCore.patchNamespacedPod(
      {
        namespace: NS,
        name: "on-a",
        body: {
          metadata: { annotations: { [LEGACY_MARK.status]: "initialized", [LEGACY_MARK.netns]: "4026530001", [LEGACY_MARK.rules]: "fedcba9876543210" } },
        },
      },
      merge,
    );
    assert.deepEqual(readMark((await admin.readNamespacedPod({ namespace: NS, name: "on-a" })).metadata?.annotations ?? {}), {
      status: "initialized",
      netns: "4026530001",
      rules: "fedcba9876543210",
    });
    await runnerA.markInitialized(pod("on-a"), { netns: "4026532246", rules: "0123456789abcdef" });
    const annotations = (await admin.readNamespacedPod({ namespace: NS, name: "on-a" })).metadata?.annotations ?? {};
    assert.deepEqual(
      Object.keys(annotations).filter((k) => (Object.values(LEGACY_MARK) as string[]).includes(k)),
      [],
      "the legacy names are gone",
    );
    assert.deepEqual(readMark(annotations), { status: "initialized", netns: "4026532246", rules: "0123456789abcdef" });
    await clearMarkAs(runnerCore, { namespace: NS, name: "on-a" });
  });

  test("the node-runner marks a pod refused or skipped with a one-line reason (its real code path), then initialized (the reason goes); nobody else, no other status, no reason over 1024 characters", async () => {
    await runnerA.markSkipped(pod("on-a"), "the policy skips this pod (namespace-excluded: shop)");
    assert.deepEqual(readMark((await admin.readNamespacedPod({ namespace: NS, name: "on-a" })).metadata?.annotations ?? {}), {
      status: STATUS_SKIPPED,
      reason: "the policy skips this pod (namespace-excluded: shop)",
    });
    await runnerA.markRefused(pod("on-a"), 'invalid capture configuration:\n  excludeOutboundPorts: "99999" is invalid');
    let annotations = (await admin.readNamespacedPod({ namespace: NS, name: "on-a" })).metadata?.annotations ?? {};
    assert.equal(annotations[MARK.status], STATUS_REFUSED);
    assert.equal(annotations[MARK.reason], 'invalid capture configuration: excludeOutboundPorts: "99999" is invalid');
    // A long reason is cut to the policy's bound by the runner itself.
    await runnerA.markRefused(pod("on-a"), "x".repeat(5000));
    assert.equal((await admin.readNamespacedPod({ namespace: NS, name: "on-a" })).metadata?.annotations?.[MARK.reason]?.length, 1024);
    await runnerA.markInitialized(pod("on-a"), { netns: "4026532246", rules: "0123456789abcdef" });
    annotations = (await admin.readNamespacedPod({ namespace: NS, name: "on-a" })).metadata?.annotations ?? {};
    assert.equal(annotations[MARK.status], STATUS_INITIALIZED);
    assert.equal(annotations[MARK.reason], undefined);
    await clearMarkAs(runnerCore, { namespace: NS, name: "on-a" });

    const annotate = (client: k8s.CoreV1Api, values: Record<string, string>) =>
      client.patchNamespacedPod({ namespace: NS, name: "on-a", body: { metadata: { annotations: values } } }, merge);
    await assert.rejects(annotate(admin, { [MARK.status]: STATUS_REFUSED, [MARK.reason]: "forged" }), forbidden(/only the podnet node-runner may set/));
    await assert.rejects(annotate(admin, { [MARK.reason]: "forged" }), forbidden(/only the podnet node-runner may set/));
    await assert.rejects(annotate(admin, { [MARK.status]: STATUS_SKIPPED }), forbidden(/only the podnet node-runner may set/));
    await assert.rejects(annotate(runnerCore, { [MARK.status]: "meshed" }), forbidden(/initialized, refused or skipped, nothing else/));
    await assert.rejects(annotate(runnerCore, { [LEGACY_MARK.status]: "meshed" }), forbidden(/initialized, refused or skipped, nothing else/));
    await assert.rejects(annotate(runnerCore, { [MARK.status]: STATUS_REFUSED, [MARK.reason]: "y".repeat(1025) }), forbidden(/at most 1024 characters/));
    await assert.rejects(runnerA.markRefused(pod("on-b"), "no"), forbidden(/may only mark pods bound to that node/));
  });

  test("the node-runner cannot mark a pod on another node", async () => {
    await assert.rejects(
      runnerA.markInitialized(pod("on-b"), { netns: "1", rules: "x" }),
      forbidden(/node-runner of node node-a may only mark pods bound to that node/),
    );
  });

  test("the node-runner's identity check: a patch of nothing, answered only for its own node's pods, writing nothing", async () => {
    const before = await admin.readNamespacedPod({ namespace: NS, name: "on-a" });
    assert.deepEqual(await runnerA.identify(pod("on-a")), { kind: "found", terminating: false });
    const after = await admin.readNamespacedPod({ namespace: NS, name: "on-a" });
    // Unchanged: no write to etcd, no watch event for the adapter, no managed-fields entry.
    assert.equal(after.metadata?.resourceVersion, before.metadata?.resourceVersion);
    assert.deepEqual(after.metadata?.managedFields, before.metadata?.managedFields);

    const other = await runnerA.identify(pod("on-b"));
    assert.equal(other.kind, "not-on-this-node");
    assert.match("detail" in other ? other.detail : "", /node-runner of node node-a may only mark pods bound to that node/);
    const replaced = await runnerA.identify({ ...pod("on-a"), uid: "00000000-0000-0000-0000-00000000beef" });
    assert.equal(replaced.kind, "uid-mismatch");
    assert.deepEqual(await runnerA.identify({ ...pod("on-a"), name: "absent" }), { kind: "not-found" });
  });

  test("the node-runner's identity check sees a pod being deleted; the answers carry metadata only", async () => {
    const created = await admin.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: { name: "leaving", finalizers: ["example.com/hold"] },
        spec: { nodeName: "node-a", containers: [{ name: "app", image: "example/app" }] },
      },
    });
    const leaving = { namespace: NS, name: "leaving", uid: created.metadata?.uid ?? "", ips: [] };
    try {
      await admin.deleteNamespacedPod({ namespace: NS, name: "leaving" });
      assert.deepEqual(await runnerA.identify(leaving), { kind: "found", terminating: true });
      // What KubePodApi asks for: no spec, no status, whatever their size.
      const answer = (await apiRequest(
        runnerConnection,
        "PATCH",
        podPath(NS, "leaving"),
        { contentType: "application/merge-patch+json", value: { metadata: { uid: leaving.uid } } },
        { accept: METADATA_ONLY },
      )) as Record<string, unknown>;
      assert.equal(answer.kind, "PartialObjectMetadata");
      assert.deepEqual(Object.keys(answer).sort(), ["apiVersion", "kind", "metadata"]);
    } finally {
      await admin.patchNamespacedPod({ namespace: NS, name: "leaving", body: { metadata: { finalizers: null } } }, merge);
    }
  });

  test("the node-runner's token reads no pod: no get, list or watch, on its node or any other", async () => {
    const refusedByRbac = (err: unknown) => err instanceof k8s.ApiException && err.code === 403;
    await assert.rejects(runnerCore.readNamespacedPod({ namespace: NS, name: "on-a" }), refusedByRbac);
    await assert.rejects(runnerCore.listPodForAllNamespaces({ fieldSelector: "spec.nodeName=node-a" }), refusedByRbac);
    await assert.rejects(runnerCore.listNamespacedPod({ namespace: NS, watch: true }), refusedByRbac);
  });

  test("the node-runner's Events: its real code path passes; other nodes, reasons, objects and long messages are refused", async () => {
    await runnerA.recordEvent(pod("on-a"), { type: "Normal", reason: "NetworkInitialized", message: "traffic capture programmed" });
    await runnerA.recordEvent(pod("on-a"), { type: "Warning", reason: "NetworkInitFailed", message: "x".repeat(5000) });
    const event = (overrides: Partial<k8s.CoreV1Event>): k8s.CoreV1Event => ({
      metadata: { generateName: "forged." },
      involvedObject: { apiVersion: "v1", kind: "Pod", namespace: NS, name: "on-a" },
      reason: "NetworkInitialized",
      message: "m",
      type: "Normal",
      source: { component: "node-runner", host: "node-a" },
      ...overrides,
    });
    const create = (namespace: string, body: k8s.CoreV1Event) => runnerCore.createNamespacedEvent({ namespace, body });
    await create(NS, event({}));
    await assert.rejects(
      create(NS, event({ source: { component: "node-runner", host: "node-b" } })),
      forbidden(/node-runner of node node-a records Events only as that node/),
    );
    await assert.rejects(create(NS, event({ reportingInstance: "node-b" })), forbidden(/only as that node/));
    await assert.rejects(create(NS, event({ reason: "Killing", message: "Stopping container app" })), forbidden(/NetworkInitialized or NetworkInitFailed/));
    await assert.rejects(create(NS, event({ involvedObject: { apiVersion: "v1", kind: "Secret", namespace: NS, name: "db" } })), forbidden(/only about pods/));
    await assert.rejects(create(NS, event({ message: "y".repeat(1025) })), forbidden(/at most 1024 characters/));
    // Others' Events are none of the policy's business.
    await admin.createNamespacedEvent({ namespace: NS, body: event({ reason: "Anything", source: { component: "someone" } }) });
  });

  test("the node-runner cannot change anything but its annotations", async () => {
    await assert.rejects(
      runnerCore.patchNamespacedPod({ namespace: NS, name: "on-a", body: { metadata: { labels: { sneaky: "yes" } } } }, merge),
      forbidden(/may change only the podnet mark annotations/),
    );
    await assert.rejects(
      runnerCore.patchNamespacedPod({ namespace: NS, name: "on-a", body: { metadata: { annotations: { other: "x", [MARK.status]: "initialized" } } } }, merge),
      forbidden(/may change only/),
    );
    // A finalizer would hold the pod in Terminating for ever; an owner would let a controller delete it.
    await assert.rejects(
      runnerCore.patchNamespacedPod({ namespace: NS, name: "on-a", body: { metadata: { finalizers: ["example.com/hold"] } } }, merge),
      forbidden(/may change only/),
    );
    await assert.rejects(
      runnerCore.patchNamespacedPod(
        {
          namespace: NS,
          name: "on-a",
          body: { metadata: { ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "x", uid: "00000000-0000-0000-0000-000000000001" }] } },
        },
        merge,
      ),
      forbidden(/may change only/),
    );
  });

  test("users keep changing their own annotations", async () => {
    await admin.patchNamespacedPod({ namespace: NS, name: "users", body: { metadata: { annotations: { "example.com/owner": "team-a" } } } }, merge);
    const after = await admin.readNamespacedPod({ namespace: NS, name: "users" });
    assert.equal(after.metadata?.annotations?.["example.com/owner"], "team-a");
  });
});
