// Attacks on the decision function, on real parts: the real kube-apiserver (TokenReview,
// ServiceAccount tokens, RBAC), a node-runner and real test pods. Anyone in the cluster who can
// reach the function can post events; none of these may make it act for them.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { MARK, STATUS_INITIALIZED } from "../../contract/mark.ts";
import { missingBinariesReason } from "../controlplane/harness.ts";
import { apiServerSourceEvent, deliver, meshPodObject, pingEvent } from "../support/apiserversource.ts";
import { FUNCTION_AUDIENCE, senderToken } from "../support/components.ts";
import { metricSeries, scrapeMetrics } from "../support/metrics.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { waitForAnnotations } from "../support/mesh-pods.ts";
import { startStack, type Stack } from "../support/stack.ts";
import { testPodsUnavailableReason } from "../support/test-pods.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
const NS = "shop";

describe("attacks on the decision function [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let stack: Stack;
  before(async () => {
    assertAvailable(unavailable);
    stack = await startStack({ withAdapter: false, functionEnv: { RESYNC_MIN_INTERVAL_MS: "60000" } });
    await stack.cp.ensureNamespace(NS);
  });
  after(async () => {
    await stack.stop();
  });

  const url = (): string => `${stack.fn.url}/`;
  const metric = async (name: string): Promise<string> =>
    (await stack.fn.metrics())
      .split("\n")
      .filter((l) => l.startsWith(name))
      .join("\n");

  test("attack 9b: events without a valid sender identity are refused (401) and do nothing", async () => {
    const pod = await stack.createPod({ namespace: NS, name: "no-token" });
    const current = await stack.core.readNamespacedPod({ namespace: NS, name: pod.name });
    const event = apiServerSourceEvent("add", JSON.parse(JSON.stringify(current)) as { metadata: { namespace: string; name: string } });
    const wrongAudience = await senderToken(stack.cp, "ApiServerSource", "https://kubernetes.default.svc.cluster.local");
    const notAllowed = await stack.cp.serviceAccountToken(NS, "some-workload", undefined, FUNCTION_AUDIENCE);
    for (const [what, token, reason] of [
      ["no token", undefined, "missing-token"],
      ["a forged token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "invalid-token"],
      ["a token for another audience", wrongAudience, "invalid-token"],
      ["a workload's own token", notAllowed, "sender-not-allowed"],
    ] as const) {
      const res = await deliver(url(), event, token);
      assert.equal(res.status, 401, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.reason, reason, what);
      const ping = await deliver(url(), pingEvent(), token);
      assert.equal(ping.status, 401, `${what} (resync): ${JSON.stringify(ping.body)}`);
    }
    assert.doesNotMatch(pod.sandbox.exec(["iptables-save"]), /ISTIO/);
    const annotations = (await stack.core.readNamespacedPod({ namespace: NS, name: pod.name })).metadata?.annotations ?? {};
    assert.equal(annotations[MARK.status], undefined);
    assert.match(await metric("podnet_function_auth_failures_total"), /reason="sender-not-allowed"\} [1-9]/);
  });

  test("attack 9a: forged pod content in a Resource event is never signed: the API server's pod is", async () => {
    const pod = await stack.createPod({ namespace: NS, name: "forged" });
    // The event names the real pod (uid, node, IP) but carries hostile-but-valid annotations.
    const forged = meshPodObject(pod.name, {
      namespace: NS,
      uid: pod.uid,
      ip: pod.ip,
      annotations: { "traffic.sidecar.istio.io/excludeOutboundIPRanges": "0.0.0.0/0", "traffic.sidecar.istio.io/includeInboundPorts": "" },
    });
    const res = await deliver(url(), apiServerSourceEvent("update", forged), stack.tokens.pods);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const marked = await waitForAnnotations(stack.core, pod, (a) => a[MARK.status] === STATUS_INITIALIZED);
    assert.equal(marked[MARK.netns], pod.sandbox.netnsInode());
    const rules = pod.sandbox.exec(["iptables-save"]);
    assert.doesNotMatch(rules, /0\.0\.0\.0\/0 -j RETURN/, "the forged exclusion was not applied");
    assert.match(rules, /-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT/, "inbound capture is on, as the real pod asks");
  });

  test("attack 9a: an event for a pod that does not exist makes the function send nothing", async () => {
    const ghost = meshPodObject("ghost", { namespace: NS });
    const res = await deliver(url(), apiServerSourceEvent("add", ghost), stack.tokens.pods);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(
      (res.body as { results: { outcome: string; reason: string }[] }).results.map((r) => [r.outcome, r.reason]),
      [["skipped", "deleted"]],
    );
  });

  test("attack 9d: resyncs are rate-limited: a burst of PingSource events sweeps the cluster once", async () => {
    const first = await deliver(url(), pingEvent(), stack.tokens.resync);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal(typeof first.body.resync, "object");
    for (let i = 0; i < 5; i++) {
      const again = await deliver(url(), pingEvent(), stack.tokens.resync);
      assert.equal(again.status, 200);
      assert.equal(again.body.resync, "rate-limited");
    }
    assert.match(await metric("podnet_function_resyncs_rate_limited_total"), / 5$/m);
  });

  test("attack 13: the dead-letter sink takes no event without a sender's token, and a sender cannot grow its metrics", async () => {
    const before = await metric("podnet_function_events_total");
    for (let i = 0; i < 50; i++) {
      const res = await fetch(`${stack.fn.url}/dead-letter`, { method: "POST", headers: { "ce-type": `junk.${i}`, "ce-id": String(i) }, body: "{}" });
      assert.equal(res.status, 401);
    }
    for (let i = 0; i < 50; i++) {
      const res = await fetch(`${stack.fn.url}/dead-letter`, {
        method: "POST",
        headers: { "ce-type": `junk.${i}`, "ce-id": String(i), authorization: `Bearer ${stack.tokens.pods}` },
        body: "{}",
      });
      assert.equal(res.status, 202);
    }
    const after = await metric("podnet_function_events_total");
    assert.doesNotMatch(after, /junk/, "no label holds a sender's type");
    assert.match(after, /type="other",outcome="dead-letter"\} 50/);
    assert.equal(after.split("\n").length - before.split("\n").length <= 1, true, "one new series at most");
  });

  test("attack 14: a flood of forged tokens costs no TokenReview each, and a source's events are served meanwhile", async () => {
    const reviews = async (): Promise<number> =>
      metricSeries(await scrapeMetrics(`${stack.cp.server}/metrics`, { ca: stack.cp.ca, token: stack.cp.adminToken }), "apiserver_request_total")
        .filter((s) => s.labels.resource === "tokenreviews")
        .reduce((sum, s) => sum + s.value, 0);
    const pod = await stack.createPod({ namespace: NS, name: "during-flood" });
    const current = await stack.core.readNamespacedPod({ namespace: NS, name: pod.name });
    const event = apiServerSourceEvent("add", JSON.parse(JSON.stringify(current)) as { metadata: { namespace: string; name: string } });
    const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString("base64url");
    const forged = (i: number, sub: string): string =>
      `${part({ alg: "RS256" })}.${part({ sub, aud: [FUNCTION_AUDIENCE], exp: Math.floor(Date.now() / 1000) + 600, jti: String(i) })}.c2ln`;
    const before = await reviews();
    // Most claim a workload's identity (refused locally); some claim the source's (each one review at most).
    const flood = Array.from({ length: 400 }, (_, i) =>
      deliver(
        url(),
        event,
        forged(
          i,
          i % 10 === 0 ? "system:serviceaccount:podnet-system:podnet-pods-oidc-sources.knative.dev-apiserversource" : `system:serviceaccount:${NS}:w${i}`,
        ),
      ),
    );
    const served = await deliver(url(), event, stack.tokens.pods);
    assert.equal(served.status, 200, JSON.stringify(served.body));
    const answers = await Promise.all(flood);
    assert.ok(
      answers.every((a) => a.status === 401 || a.status === 503),
      JSON.stringify(answers.find((a) => a.status !== 401 && a.status !== 503)),
    );
    assert.ok((await reviews()) - before <= 40, `TokenReviews for 400 forged tokens: ${(await reviews()) - before}`);
    await waitForAnnotations(stack.core, pod, (a) => a[MARK.status] === STATUS_INITIALIZED);
  });
});
