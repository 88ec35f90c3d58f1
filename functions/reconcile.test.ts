// The per-pod core with its edges replaced (a recording dispatcher and an in-memory cluster):
// which pod is decided, under which policy, and what is queued.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import { meshPodObject } from "../test/support/apiserversource.ts";
import { MARK, STATUS_SKIPPED } from "../contract/mark.ts";
import { WAITER_COMMAND, WAITER_CONTAINER } from "./decision.ts";
import type { DispatchDecision, DispatchResult } from "./dispatch.ts";
import { createFunctionMetrics } from "./metrics.ts";
import { parsePod, type Pod } from "./pod.ts";
import { parsePolicy } from "./policy.ts";
import { createReconciler, type ClusterReader } from "./reconcile.ts";

const log = pino({ level: "silent" });

function setup(apiPods: Record<string, Pod>) {
  const offered: { decision: DispatchDecision; policyId: string }[] = [];
  const reads: string[] = [];
  const readVersions: (string | undefined)[] = [];
  const cluster: ClusterReader = {
    getPod: (_ns, name, notOlderThan) => {
      reads.push(name);
      readVersions.push(notOlderThan);
      return Promise.resolve(apiPods[name]);
    },
    getNamespace: () => Promise.resolve(undefined),
    listPods: async function* () {
      yield await Promise.resolve(Object.values(apiPods));
    },
    recordPodWarning: () => Promise.resolve(),
  };
  const reconciler = createReconciler({
    dispatcher: {
      send: (decision, policyId) => {
        offered.push({ decision, policyId });
        return Promise.resolve({ ok: true, status: 200, result: "applied" });
      },
    },
    cluster,
    metrics: createFunctionMetrics({ defaultMetrics: false }),
    policy: () => parsePolicy("mode: enforce"),
  });
  return { reconciler, offered, reads, readVersions };
}

/** A reconciler whose node-runner answers with `send`, over an API server that always has `apiPod`. */
function sendingReconciler(apiPod: Pod, send: () => Promise<DispatchResult>, retryDelaysMs: readonly number[], onRead: () => void = () => undefined) {
  return createReconciler({
    dispatcher: { send },
    cluster: {
      getPod: () => {
        onRead();
        return Promise.resolve(apiPod);
      },
      getNamespace: () => Promise.resolve(undefined),
      listPods: async function* () {
        yield await Promise.resolve([]);
      },
      recordPodWarning: () => Promise.resolve(),
    },
    metrics: createFunctionMetrics({ defaultMetrics: false }),
    policy: () => parsePolicy("mode: enforce"),
    retryDelaysMs,
  });
}

/** A mesh pod that carries the template's waiter, in `namespace`. */
function waitingPod(name: string, namespace: string, annotations: Record<string, string> = {}): Pod {
  const o = meshPodObject(name, { namespace, annotations });
  return parsePod({ ...o, spec: { ...o.spec, initContainers: [{ name: WAITER_CONTAINER, image: "waiter", command: [WAITER_COMMAND] }] } });
}

describe("pods the policy keeps out of the mesh while their waiter waits", () => {
  const excluding = parsePolicy("mode: enforce\nnamespaces:\n  exclude: [knative-serving]");

  test("released: its node-runner is asked to mark it skipped with the reason, once; a pod without the waiter, or in dry-run, is not", async () => {
    const pod = waitingPod("activator", "knative-serving");
    const { reconciler, offered, reads } = setup({});
    assert.equal((await reconciler.reconcilePod(pod, excluding, log, { fromApi: false })).outcome, "queued");
    await reconciler.whenIdle();
    assert.deepEqual(reads, [], "a skip is decided from the event's pod");
    const sent = offered[0]?.decision;
    assert.ok(sent?.action === "release");
    assert.deepEqual(
      [sent.reason, sent.skip, sent.node, sent.pod.name],
      ["namespace-excluded", "the policy skips this pod (namespace-excluded: knative-serving)", "node-a", "activator"],
    );
    // Marked so already (its next event): nothing more to send.
    const marked = waitingPod("activator", "knative-serving", { [MARK.status]: STATUS_SKIPPED, [MARK.reason]: sent.skip });
    assert.equal((await reconciler.reconcilePod(marked, excluding, log, { fromApi: false })).outcome, "skipped");
    const plain = parsePod(meshPodObject("plain", { namespace: "knative-serving" }));
    assert.equal((await reconciler.reconcilePod(plain, excluding, log, { fromApi: false })).outcome, "skipped");
    const dryRun = parsePolicy("mode: dry-run\nnamespaces:\n  exclude: [knative-serving]");
    assert.equal((await reconciler.reconcilePod(waitingPod("other", "knative-serving"), dryRun, log, { fromApi: false })).outcome, "skipped");
    await reconciler.whenIdle();
    assert.equal(offered.length, 1);
  });

  test("fail-open (the incident switch): a pod that would get rules, or be refused, is released instead; nothing is applied; a pod with rules keeps them", async () => {
    const failOpen = parsePolicy("mode: fail-open");
    const waiting = waitingPod("web", "shop");
    const invalid = waitingPod("bad", "shop", { "traffic.sidecar.istio.io/includeOutboundPorts": "not-a-port" });
    const initialized = waitingPod("done", "shop", { [MARK.status]: "initialized" });
    const noWaiter = parsePod(meshPodObject("legacy", { namespace: "shop" }));
    const { reconciler, offered } = setup({ web: waiting, bad: invalid, done: initialized, legacy: noWaiter });
    for (const pod of [waiting, invalid]) assert.equal((await reconciler.reconcilePod(pod, failOpen, log, { fromApi: true })).outcome, "queued");
    assert.equal((await reconciler.reconcilePod(initialized, failOpen, log, { fromApi: true })).outcome, "skipped");
    assert.equal((await reconciler.reconcilePod(noWaiter, failOpen, log, { fromApi: true })).outcome, "fail-open");
    await reconciler.whenIdle();
    assert.deepEqual(
      offered.map((o) => [o.decision.action, o.decision.reason, o.decision.action === "release" ? o.decision.skip : ""]),
      [
        ["release", "fail-open", "the policy's incident switch is on (mode: fail-open)"],
        ["release", "fail-open", "the policy's incident switch is on (mode: fail-open)"],
      ],
    );
  });
});

describe("reconcilePod", () => {
  const enforce = parsePolicy("mode: enforce");

  test("an event's copy of a pod only triggers: the API server's pod (not older than the event's) is decided and queued, with the policy it was decided under", async () => {
    const apiPod = parsePod(meshPodObject("web", { uid: "uid-api", ip: "10.0.0.9" }));
    const { reconciler, offered, reads, readVersions } = setup({ web: apiPod });
    const eventPod = parsePod(meshPodObject("web", { uid: "uid-event", ip: "10.0.0.66" }));
    const r = await reconciler.reconcilePod(eventPod, enforce, log, { fromApi: false });
    assert.equal(r.outcome, "queued");
    assert.deepEqual(reads, ["web"]);
    assert.deepEqual(readVersions, [eventPod.metadata.resourceVersion]);
    assert.equal(offered.length, 1);
    const decision = offered[0]?.decision;
    assert.equal(decision?.action === "apply" ? decision.pod.uid : undefined, "uid-api");
    assert.deepEqual(decision?.action === "apply" ? decision.pod.ips : undefined, ["10.0.0.9"]);
    assert.equal(offered[0]?.policyId, enforce.id);
  });

  test("an event's copy decides skips only: its capture annotations, valid or not, are never what is decided", async () => {
    const invalid = { "traffic.sidecar.istio.io/excludeInterfaces": "eth0 -j ACCEPT" };
    const valid = { "traffic.sidecar.istio.io/excludeInterfaces": "eth1" };
    const apiValid = parsePod(meshPodObject("web", { uid: "uid-1", annotations: valid }));
    const first = setup({ web: apiValid });
    const r1 = await first.reconciler.reconcilePod(parsePod(meshPodObject("web", { uid: "uid-1", annotations: invalid })), enforce, log, { fromApi: false });
    assert.equal(r1.outcome, "queued");
    const queued = first.offered[0]?.decision;
    assert.equal(queued?.action === "apply" ? queued.capture.excludeInterfaces : undefined, "eth1");

    const apiInvalid = parsePod(meshPodObject("web", { uid: "uid-2", annotations: invalid }));
    const second = setup({ web: apiInvalid });
    const r2 = await second.reconciler.reconcilePod(parsePod(meshPodObject("web", { uid: "uid-2", annotations: valid })), enforce, log, { fromApi: false });
    assert.equal(r2.outcome, "invalid");
    assert.equal(second.offered.length, 0);
  });

  test("a pod from the API server is not read again; the same version under the same policy is a duplicate, under a new policy it is decided again", async () => {
    const pod = parsePod(meshPodObject("web"));
    const { reconciler, offered, reads } = setup({});
    assert.equal((await reconciler.reconcilePod(pod, enforce, log, { fromApi: true })).outcome, "queued");
    assert.equal((await reconciler.reconcilePod(pod, enforce, log, { fromApi: true })).outcome, "duplicate");
    const next = parsePolicy("mode: enforce\nnamespaces:\n  exclude: [other]");
    assert.equal((await reconciler.reconcilePod(pod, next, log, { fromApi: true })).outcome, "queued");
    assert.equal((await reconciler.reconcilePod(pod, next, log, { fromApi: true })).outcome, "duplicate");
    // Back to the first policy (a reload undone): decided again under it.
    assert.equal((await reconciler.reconcilePod(pod, enforce, log, { fromApi: true })).outcome, "queued");
    await reconciler.whenIdle();
    assert.deepEqual(reads, []);
    assert.deepEqual(
      offered.map((o) => o.policyId),
      [enforce.id, next.id, enforce.id],
    );
  });

  test("a pod deleted before the fresh read is skipped as deleted, nothing queued", async () => {
    const { reconciler, offered } = setup({});
    const r = await reconciler.reconcilePod(parsePod(meshPodObject("gone")), enforce, log, { fromApi: false });
    assert.deepEqual(r, { pod: "shop/gone", outcome: "skipped", reason: "deleted" });
    assert.equal(offered.length, 0);
  });

  test("a resync decides every listed pod under one snapshot and is rate-limited", async () => {
    const { reconciler, offered } = setup({ a: parsePod(meshPodObject("a")), b: parsePod(meshPodObject("b")) });
    const first = await reconciler.resync(enforce, log);
    assert.deepEqual(first.summary, { seen: 2, queued: 2, skipped: 0, failed: 0 });
    assert.equal((await reconciler.resync(enforce, log)).summary, "rate-limited");
    assert.equal(offered.length, 2);
  });

  test("a dispatch that fails in a way that can pass (node-runner restarting) is retried: at once with the same decision, after a second from a fresh read; one that cannot is not", async () => {
    const apiPod = parsePod(meshPodObject("web"));
    let reads = 0;
    const results: DispatchResult[] = [
      { ok: false, status: 0, reason: "ECONNREFUSED", retryable: true },
      { ok: false, status: 503, reason: "netns-not-found", retryable: true, retryAfterMs: 1000 },
      { ok: true, status: 200, result: "applied" },
    ];
    let sends = 0;
    const reconciler = sendingReconciler(
      apiPod,
      () => Promise.resolve(results[sends++] ?? { ok: false, status: 409, reason: "uid-mismatch", retryable: false }),
      [5, 5, 5],
      () => reads++,
    );
    await reconciler.reconcilePod(apiPod, enforce, log, { fromApi: true });
    await reconciler.whenIdle();
    assert.equal(sends, 3, "sent, retried at once, retried after the node-runner's Retry-After, applied: no more");
    assert.equal(reads, 1, "only the retry a second after the last send read the pod again");
    assert.equal(reconciler.queued, 0);
  });

  test("a dispatch that cannot pass is not retried, and the queue gives up after its last delay", async () => {
    const apiPod = parsePod(meshPodObject("web"));
    for (const [result, expected] of [
      [{ ok: false, status: 409, reason: "uid-mismatch", retryable: false }, 1],
      [{ ok: false, status: 0, reason: "ECONNREFUSED", retryable: true }, 3],
    ] as const) {
      let sends = 0;
      const reconciler = sendingReconciler(apiPod, () => {
        sends++;
        return Promise.resolve(result);
      }, [1, 1]);
      await reconciler.reconcilePod(apiPod, enforce, log, { fromApi: true });
      for (let i = 0; i < 100 && reconciler.queued > 0; i++) await new Promise((r) => setTimeout(r, 5));
      assert.equal(sends, expected, result.reason);
      assert.equal(reconciler.queued, 0);
    }
  });
});

test("a dispatch's log line says where the pod waited: deciding its event (decidedMs), in the queue (queuedMs), for its node-runner (sendMs), with the pod it was for", async () => {
  const lines: Record<string, unknown>[] = [];
  const captured = pino({ level: "info" }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  const pod = waitingPod("late", "shop");
  const RUNNER_MS = 30;
  const reconciler = sendingReconciler(
    pod,
    () =>
      new Promise((resolve) =>
        setTimeout(() => {
          resolve({ ok: true, status: 200, result: "applied" });
        }, RUNNER_MS),
      ),
    [],
  );
  const receivedAt = performance.now();
  assert.equal((await reconciler.reconcilePod(pod, parsePolicy("mode: enforce"), captured, { fromApi: true, receivedAt })).outcome, "queued");
  await reconciler.whenIdle();
  const dispatched = lines.find((l) => l.msg === "dispatched: applied");
  assert.ok(dispatched !== undefined, JSON.stringify(lines));
  assert.deepEqual(dispatched.pod, { namespace: "shop", name: "late", uid: pod.metadata.uid });
  const { decidedMs, queuedMs, sendMs } = dispatched as { decidedMs: unknown; queuedMs: unknown; sendMs: unknown };
  assert.ok(Number.isInteger(decidedMs) && (decidedMs as number) >= 0, `decidedMs ${String(decidedMs)}`);
  assert.ok(Number.isInteger(queuedMs) && (queuedMs as number) >= 0, `queuedMs ${String(queuedMs)}`);
  // A timer never fires before its delay: the runner's answer took at least that long.
  assert.ok(Number.isInteger(sendMs) && (sendMs as number) >= RUNNER_MS - 1, `sendMs ${String(sendMs)}`);
});
