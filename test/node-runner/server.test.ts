// The node-runner as it runs on a node: its real entry point as a process, real test pods,
// the real kube-apiserver with the node-runner's own ServiceAccount under the RBAC of
// config/node-runner/rbac.yaml. Requests are signed as the decision function signs them.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, randomUUID, X509Certificate, type KeyObject } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { APPLY_PATH, REFUSE_PATH, SKIP_PATH } from "../../contract/apply-request.ts";
import { MARK, readMark, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../../contract/mark.ts";
import { DEFAULT_CAPTURE_CONFIG } from "../../contract/capture-config.ts";
import { signRequest } from "../../contract/signature.ts";
import { httpStatus, missingBinariesReason, startControlPlane, waitFor, type ControlPlane } from "../controlplane/harness.ts";
import {
  nodeRunnerTls,
  nodeRunnerTlsOptions,
  postToRunner,
  sendSigned,
  signingKeyDirs,
  startNodeRunner,
  type Component,
  type RunnerReply,
} from "../support/components.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { createMeshPod, waitForPodEvent } from "../support/mesh-pods.ts";
import { metricSum } from "../support/metrics.ts";
import { TestPods, testPodsUnavailableReason } from "../support/test-pods.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
const NODE = "node-a";
const NS = "shop";

type Reply = RunnerReply;

describe("node-runner server [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let cp: ControlPlane;
  let pods: TestPods;
  let runner: Component;
  let port: number;
  let dir: string;
  let core: k8s.CoreV1Api;
  let signingKey: KeyObject;
  let runnerOptions: Parameters<typeof startNodeRunner>[1];
  const runnerLog = (): string => runner.log();

  before(async () => {
    assertAvailable(unavailable);
    cp = await startControlPlane();
    pods = TestPods.create();
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-runner-"));
    await cp.ensureNamespace(NS);
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    const keys = signingKeyDirs(dir, "fn-1");
    signingKey = keys.signingKey.privateKey;
    runnerOptions = { nodeName: NODE, publicKeysDir: keys.publicDir, stateDir: path.join(dir, "state"), cgroupRoot: pods.cgroupRoot };
    runner = await startNodeRunner(cp, runnerOptions);
    port = runner.port;
  });

  after(async () => {
    await runner.stop();
    await pods.destroy();
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The node-runner logs asynchronously: wait briefly for a line. */
  async function logged(pattern: RegExp, what: string): Promise<void> {
    await runner.waitForLog(pattern, 3000).catch(() => assert.fail(`${what}: no log line matching ${String(pattern)}`));
  }

  const get = (p: string): Promise<number> => httpStatus(`https://127.0.0.1:${port}${p}`, nodeRunnerTlsOptions());
  const send = (p: string, body: Buffer, headers: Record<string, string>): Promise<Reply> => postToRunner(port, p, body, headers);

  function signed(
    p: string,
    payload: unknown,
    options: { now?: number; keyid?: string; key?: KeyObject } = {},
  ): { body: Buffer; headers: Record<string, string> } {
    const body = Buffer.from(JSON.stringify(payload));
    const headers = signRequest(
      { method: "POST", authority: `127.0.0.1:${port}`, path: p, contentType: "application/json", body },
      { keyid: options.keyid ?? "fn-1", privateKey: options.key ?? signingKey },
      { now: options.now ?? Date.now(), nonce: randomUUID() },
    );
    return { body, headers };
  }

  async function signedPost(p: string, payload: unknown, options: Parameters<typeof signed>[2] = {}): Promise<Reply> {
    const { body, headers } = signed(p, payload, options);
    return send(p, body, headers);
  }

  const createPod = (name: string, overrides: { nodeName?: string; hostNetwork?: boolean } = {}) =>
    createMeshPod(core, pods, {
      namespace: NS,
      name,
      nodeName: overrides.nodeName ?? NODE,
      ...(overrides.hostNetwork === undefined ? {} : { hostNetwork: overrides.hostNetwork }),
    });

  function applyRequest(pod: { name: string; uid: string; ip: string }, capture: unknown = DEFAULT_CAPTURE_CONFIG, node = NODE) {
    return {
      apiVersion: "podnet/v1",
      kind: "ApplyRequest",
      node,
      pod: { namespace: NS, name: pod.name, uid: pod.uid, ips: [pod.ip] },
      capture,
      decision: { reason: "mesh member", policy: "test" },
    };
  }

  test("apply programs the pod, marks it and records an Event; a repeat is unchanged; remove undoes it", async () => {
    const { uid, ip, sandbox } = await createPod("web-1");
    const req = applyRequest({ name: "web-1", uid, ip });

    const first = await signedPost(APPLY_PATH, req);
    assert.equal(first.status, 200, JSON.stringify(first.body) + runnerLog().slice(-2000));
    assert.equal(first.body.result, "applied");
    assert.equal(first.body.netns, sandbox.netnsInode());
    assert.match(sandbox.exec(["iptables-save"]), /-A ISTIO_OUTPUT -j ISTIO_REDIRECT/);

    const marked = await core.readNamespacedPod({ name: "web-1", namespace: NS });
    const annotations = marked.metadata?.annotations ?? {};
    assert.equal(annotations[MARK.status], STATUS_INITIALIZED);
    assert.equal(annotations[MARK.netns], sandbox.netnsInode());
    assert.equal(annotations[MARK.rules], first.body.rules);

    await waitForPodEvent(core, { namespace: NS, uid }, "NetworkInitialized").catch((err: unknown) =>
      assert.fail(`${String(err)}; node-runner log:\n${runnerLog().slice(-3000)}`),
    );

    const again = await signedPost(APPLY_PATH, req);
    assert.equal(again.body.result, "unchanged");
  });

  test("bad input gets its status, a log line, and changes nothing", async () => {
    const { uid, ip, sandbox } = await createPod("guarded");
    const other = await createPod("elsewhere", { nodeName: "node-b" });
    const hostNet = await createPod("hostnet", { hostNetwork: true });
    const good = applyRequest({ name: "guarded", uid, ip });
    const bigBody = Buffer.alloc(70 * 1024, "a");
    const { privateKey: strangerKey } = generateKeyPairSync("ed25519");
    // The replay's original goes to a pod of its own: the guarded pod's netns stays empty.
    const replayTarget = await createPod("replayed");
    const replayed = signed(APPLY_PATH, applyRequest({ name: "replayed", uid: replayTarget.uid, ip: replayTarget.ip }));
    assert.equal((await send(APPLY_PATH, replayed.body, replayed.headers)).status, 200, "the original request is accepted");

    const cases: [string, () => Promise<Reply>, number, string][] = [
      [
        "malformed JSON",
        () => {
          const b = Buffer.from("{not json");
          const h = signRequest(
            { method: "POST", authority: `127.0.0.1:${port}`, path: APPLY_PATH, contentType: "application/json", body: b },
            { keyid: "fn-1", privateKey: signingKey },
            { now: Date.now(), nonce: randomUUID() },
          );
          return send(APPLY_PATH, b, h);
        },
        400,
        "malformed",
      ],
      ["wrong schema", () => signedPost(APPLY_PATH, { ...good, kind: "Something" }), 400, "malformed"],
      ["oversize body", () => send(APPLY_PATH, bigBody, {}), 413, "too-large"],
      ["missing signature", () => send(APPLY_PATH, Buffer.from(JSON.stringify(good)), {}), 401, "missing-signature"],
      [
        "tampered body",
        () => {
          const s = signed(APPLY_PATH, good);
          return send(APPLY_PATH, Buffer.from(JSON.stringify({ ...good, node: "node-b" })), s.headers);
        },
        401,
        "digest-mismatch",
      ],
      ["replay", () => send(APPLY_PATH, replayed.body, replayed.headers), 401, "replay"],
      ["expired", () => signedPost(APPLY_PATH, good, { now: Date.now() - 120_000 }), 401, "expired"],
      ["unknown keyid", () => signedPost(APPLY_PATH, good, { keyid: "fn-9" }), 401, "unknown-key"],
      ["a stranger's key under our keyid", () => signedPost(APPLY_PATH, good, { key: strangerKey }), 401, "bad-signature"],
      ["wrong node", () => signedPost(APPLY_PATH, applyRequest({ name: "guarded", uid, ip }, DEFAULT_CAPTURE_CONFIG, "node-b")), 421, "wrong-node"],
      ["unknown pod", () => signedPost(APPLY_PATH, applyRequest({ name: "nope", uid, ip })), 409, "pod-not-found"],
      ["UID mismatch", () => signedPost(APPLY_PATH, applyRequest({ name: "guarded", uid: randomUUID(), ip })), 409, "uid-mismatch"],
      ["pod on another node", () => signedPost(APPLY_PATH, applyRequest({ name: "elsewhere", uid: other.uid, ip: other.ip })), 409, "not-on-this-node"],
      ["hostNetwork pod", () => signedPost(APPLY_PATH, applyRequest({ name: "hostnet", uid: hostNet.uid, ip: hostNet.ip })), 409, "host-netns"],
      [
        "invalid capture",
        () => signedPost(APPLY_PATH, applyRequest({ name: "guarded", uid, ip }, { ...DEFAULT_CAPTURE_CONFIG, excludeInterfaces: "eth0 -j ACCEPT" })),
        422,
        "invalid-capture",
      ],
    ];
    for (const [what, call, status, reason] of cases) {
      const reply = await call();
      assert.equal(reply.status, status, `${what}: ${JSON.stringify(reply.body)}`);
      assert.equal(reply.body.reason, reason, what);
      assert.doesNotMatch(sandbox.exec(["iptables-save"]), /ISTIO/, `${what}: nothing applied`);
      if (what === "hostNetwork pod") assert.doesNotMatch(execFileSync("iptables-save", { encoding: "utf8" }), /ISTIO/, "nothing applied to the node");
      await logged(new RegExp(`"msg":"refused: ${reason}"`), what);
    }
    // Of these, only the invalid capture is the pod's own lasting fault: it is marked refused, saying why.
    const pod = await core.readNamespacedPod({ name: "guarded", namespace: NS });
    assert.equal(pod.metadata?.annotations?.[MARK.status], STATUS_REFUSED);
    assert.match(pod.metadata.annotations[MARK.reason] ?? "", /^invalid capture configuration: .*excludeInterfaces: "eth0 -j ACCEPT" is invalid/);
    const failed = await waitForPodEvent(core, { namespace: NS, uid }, "NetworkInitFailed");
    assert.match(failed.message ?? "", /excludeInterfaces: "eth0 -j ACCEPT" is invalid/);
    assert.equal(failed.type, "Warning");
  });

  test("a refusal marks the pod refused; an apply then initializes it (the reason goes) and a later refusal keeps it so; bad refusals change nothing", async () => {
    const { uid, ip, sandbox } = await createPod("refusable");
    const other = await createPod("refusable-elsewhere", { nodeName: "node-b" });
    const refusal = (p: { name: string; uid: string; ip: string }, text: string) => ({
      apiVersion: "podnet/v1",
      kind: "RefuseRequest",
      node: NODE,
      pod: { namespace: NS, name: p.name, uid: p.uid, ips: [p.ip] },
      refusal: text,
      decision: { reason: "invalid-capture", policy: "test" },
    });
    const annotations = async () => (await core.readNamespacedPod({ name: "refusable", namespace: NS })).metadata?.annotations ?? {};
    const first = await signedPost(REFUSE_PATH, refusal({ name: "refusable", uid, ip }, 'invalid capture configuration: "99999" is not a port'));
    assert.deepEqual([first.status, first.body.result], [200, "refused"], JSON.stringify(first.body));
    assert.deepEqual(
      [(await annotations())[MARK.status], (await annotations())[MARK.reason]],
      [STATUS_REFUSED, 'invalid capture configuration: "99999" is not a port'],
    );
    assert.doesNotMatch(sandbox.exec(["iptables-save"]), /ISTIO/, "a refusal applies nothing");

    const applied = await signedPost(APPLY_PATH, applyRequest({ name: "refusable", uid, ip }));
    assert.equal(applied.status, 200, JSON.stringify(applied.body));
    assert.equal((await annotations())[MARK.status], STATUS_INITIALIZED);
    assert.equal((await annotations())[MARK.reason], undefined);
    const late = await signedPost(REFUSE_PATH, refusal({ name: "refusable", uid, ip }, "invalid capture configuration: changed since"));
    assert.deepEqual([late.status, late.body.result], [200, "kept-initialized"]);
    assert.equal((await annotations())[MARK.status], STATUS_INITIALIZED, "what runs stays");

    for (const [what, payload, status, reason] of [
      ["another node's pod", refusal({ name: "refusable-elsewhere", uid: other.uid, ip: other.ip }, "x"), 409, "not-on-this-node"],
      ["an empty reason", refusal({ name: "refusable", uid, ip }, ""), 400, "malformed"],
      ["a reason over 1024 characters", refusal({ name: "refusable", uid, ip }, "y".repeat(1025)), 400, "malformed"],
    ] as const) {
      const reply = await signedPost(REFUSE_PATH, payload);
      assert.deepEqual([reply.status, reply.body.reason], [status, reason], `${what}: ${JSON.stringify(reply.body)}`);
    }
    assert.equal((await core.readNamespacedPod({ name: "refusable-elsewhere", namespace: NS })).metadata?.annotations?.[MARK.status], undefined);
  });

  test("a skip marks the pod skipped with the reason and applies nothing; an apply then initializes it, and a later skip keeps it so; bad skips change nothing", async () => {
    const { uid, ip, sandbox } = await createPod("skippable");
    const other = await createPod("skippable-elsewhere", { nodeName: "node-b" });
    const skip = (p: { name: string; uid: string; ip: string }, text: string, kind = "SkipRequest") => ({
      apiVersion: "podnet/v1",
      kind,
      node: NODE,
      pod: { namespace: NS, name: p.name, uid: p.uid, ips: [p.ip] },
      skip: text,
      decision: { reason: "namespace-excluded", policy: "test" },
    });
    const annotations = async () => (await core.readNamespacedPod({ name: "skippable", namespace: NS })).metadata?.annotations ?? {};
    const reason = "the policy skips this pod (namespace-excluded: shop)";
    const first = await signedPost(SKIP_PATH, skip({ name: "skippable", uid, ip }, reason));
    assert.deepEqual([first.status, first.body.result], [200, "skipped"], JSON.stringify(first.body));
    assert.deepEqual(readMark(await annotations()), { status: STATUS_SKIPPED, reason });
    assert.doesNotMatch(sandbox.exec(["iptables-save"]), /ISTIO/, "a skip applies nothing");

    assert.equal((await signedPost(APPLY_PATH, applyRequest({ name: "skippable", uid, ip }))).status, 200);
    assert.equal((await annotations())[MARK.status], STATUS_INITIALIZED);
    const late = await signedPost(SKIP_PATH, skip({ name: "skippable", uid, ip }, reason));
    assert.deepEqual([late.status, late.body.result], [200, "kept-initialized"]);
    assert.equal((await annotations())[MARK.status], STATUS_INITIALIZED, "what runs stays");

    for (const [what, payload, status, why] of [
      ["another node's pod", skip({ name: "skippable-elsewhere", uid: other.uid, ip: other.ip }, "x"), 409, "not-on-this-node"],
      ["an empty reason", skip({ name: "skippable", uid, ip }, ""), 400, "malformed"],
      ["a reason over 1024 characters", skip({ name: "skippable", uid, ip }, "y".repeat(1025)), 400, "malformed"],
      ["a refusal's kind on the skip route", skip({ name: "skippable", uid, ip }, "x", "RefuseRequest"), 400, "malformed"],
    ] as const) {
      const reply = await signedPost(SKIP_PATH, payload);
      assert.deepEqual([reply.status, reply.body.reason], [status, why], `${what}: ${JSON.stringify(reply.body)}`);
    }
    assert.equal((await core.readNamespacedPod({ name: "skippable-elsewhere", namespace: NS })).metadata?.annotations?.[MARK.status], undefined);
  });

  test("under a flood of bad requests the server keeps serving", async () => {
    const { uid, ip } = await createPod("after-flood");
    const junk = Array.from({ length: 600 }, (_, i) => {
      switch (i % 4) {
        case 0:
          return send(APPLY_PATH, Buffer.from(randomUUID()), {});
        case 1:
          return send(APPLY_PATH, Buffer.alloc(65 * 1024 + i), {});
        case 2:
          return signedPost(APPLY_PATH, applyRequest({ name: "after-flood", uid: randomUUID(), ip }));
        default:
          return send(APPLY_PATH, Buffer.from("{}"), {
            "signature-input": `podnet=("@method");created=${i}`,
            signature: "podnet=:AAAA:",
            "content-digest": "sha-256=:x:",
          });
      }
    });
    const statuses = new Set((await Promise.all(junk)).map((r) => r.status));
    assert.deepEqual([...statuses].sort(), [401, 409, 413]);
    const ok = await signedPost(APPLY_PATH, applyRequest({ name: "after-flood", uid, ip }));
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(runner.process.exitCode, null);
    assert.equal(await get("/healthz"), 200);
  });

  test("public keys are reloaded when the key directory changes (rotation)", async () => {
    const { uid, ip } = await createPod("rotated");
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const req = applyRequest({ name: "rotated", uid, ip });
    assert.equal((await signedPost(APPLY_PATH, req, { keyid: "fn-2", key: privateKey })).body.reason, "unknown-key");
    writeFileSync(path.join(dir, "public", "fn-2.pem"), publicKey.export({ type: "spki", format: "pem" }));
    const deadline = Date.now() + 5000;
    let reply = await signedPost(APPLY_PATH, req, { keyid: "fn-2", key: privateKey });
    while (reply.status === 401 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      reply = await signedPost(APPLY_PATH, req, { keyid: "fn-2", key: privateKey });
    }
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal((await signedPost(APPLY_PATH, req)).body.result, "unchanged", "the old key stays valid too");
  });

  /** The node-runner's metrics page (its metrics port, over its TLS, with a token allowed to read it). */
  const metricsText = (): Promise<string> => runner.metrics();

  test("metrics count requests by result and signature failures by reason", async () => {
    const text = await metricsText();
    assert.match(text, /podnet_node_runner_requests_total\{route="apply",result="applied"\} \d+/);
    assert.match(text, /podnet_node_runner_signature_failures_total\{reason="replay"\} 1/);
    assert.match(text, /podnet_node_runner_apply_duration_seconds_bucket/);
    assert.match(text, /podnet_node_runner_netns_resolution_duration_seconds_bucket/);
    // The serving certificate's expiry, for an alert before it lapses.
    const notAfter = Date.parse(new X509Certificate(readFileSync(nodeRunnerTls().certFile)).validTo) / 1000;
    assert.match(text, new RegExp(`^podnet_node_runner_tls_certificate_not_after_seconds ${notAfter}$`, "m"));
  });

  test("SIGTERM: the Events still waiting are sent before the node-runner exits", async () => {
    await runner.stop();
    // A quiet time of a minute: the pod's Event is still waiting when the signal comes.
    runner = await startNodeRunner(cp, { ...runnerOptions, port, env: { EVENT_QUIET_MS: "60000" } });
    const { uid, ip } = await createPod("last-words");
    const reply = await signedPost(APPLY_PATH, applyRequest({ name: "last-words", uid, ip }));
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal(metricSum(await metricsText(), "podnet_node_runner_events_pending"), 1, "the Event waits");
    await runner.stop(); // SIGTERM; resolves when the process has exited
    const events = await core.listNamespacedEvent({ namespace: NS });
    assert.ok(
      events.items.some((e) => e.reason === "NetworkInitialized" && e.involvedObject.uid === uid),
      `no NetworkInitialized Event after the exit; log:\n${runnerLog().slice(-2000)}`,
    );
    assert.match(runnerLog(), /sending the Events still waiting/);
  });

  test("the records of deleted pods' namespaces are swept (RECORD_SWEEP_MS); a live pod's stays", async () => {
    await runner.stop();
    runner = await startNodeRunner(cp, { ...runnerOptions, port, env: { RECORD_SWEEP_MS: "1000" } });
    const gone = await createPod("swept");
    const stays = await createPod("kept");
    const applied = await Promise.all([gone, stays].map(async (pod, i) => signedPost(APPLY_PATH, applyRequest({ ...pod, name: ["swept", "kept"][i] ?? "" }))));
    const [goneNetns, staysNetns] = applied.map((reply) => String(reply.body.netns));
    const recordFiles = () => readdirSync(runnerOptions.stateDir).filter((f) => f.endsWith(".json"));
    assert.ok(recordFiles().includes(`${goneNetns}.json`) && recordFiles().includes(`${staysNetns}.json`), recordFiles().join(" "));
    await pods.removePod(gone.sandbox);
    await waitFor("the deleted pod's record swept", 10_000, () => !recordFiles().includes(`${goneNetns}.json`));
    assert.match(runnerLog(), /"removed":\d+,"kept":\d+[^\n]*records of gone network namespaces removed/);
    assert.ok(recordFiles().includes(`${staysNetns}.json`), "the live pod's record stays");
    assert.equal(metricSum(await metricsText(), "podnet_node_runner_netns_records"), recordFiles().length);
    await runner.stop();
    runner = await startNodeRunner(cp, { ...runnerOptions, port });
  });

  // A rolling update while the function sends: it keeps one connection per node and reuses it,
  // and a server's close waits for every connection to end. Without `stopping` the answers kept
  // the connection open, the close never completed and the grace timer ended the process with
  // its Events still waiting (a pod's NetworkInitialized lost in the Knative suite's DaemonSet roll).
  test("SIGTERM with a request in flight on a kept-alive connection: it is answered with Connection: close, the Events are sent, the process exits at once", async () => {
    await runner.stop();
    runner = await startNodeRunner(cp, { ...runnerOptions, port, env: { EVENT_QUIET_MS: "60000" } });
    const first = await createPod("before-stop");
    assert.equal((await signedPost(APPLY_PATH, applyRequest({ ...first, name: "before-stop" }))).status, 200);
    const second = await createPod("in-flight");
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const viaAgent = (name: string, pod: { uid: string; ip: string }) => {
      const { body, headers } = signed(APPLY_PATH, applyRequest({ uid: pod.uid, ip: pod.ip, name }));
      return postToRunner(port, APPLY_PATH, body, headers, "127.0.0.1", agent);
    };
    // The connection is busy while the signal comes: the API server, frozen, holds the request.
    process.kill(cp.apiserverPid, "SIGSTOP");
    let inFlight: Promise<Reply>;
    const exited = new Promise((resolve) => runner.process.once("exit", resolve));
    try {
      inFlight = viaAgent("in-flight", second);
      await new Promise((r) => setTimeout(r, 500));
      runner.process.kill("SIGTERM");
      await runner.waitForLog(/shutting down: finishing requests in flight/, 5000);
    } finally {
      process.kill(cp.apiserverPid, "SIGCONT");
    }
    const reply = await inFlight;
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal(reply.headers.connection, "close");
    await exited;
    await assert.rejects(viaAgent("in-flight", second), { code: "ECONNREFUSED" }, "the port takes no new connection");
    agent.destroy();
    assert.doesNotMatch(runnerLog(), /shutting down before everything was sent/);
    const initialized = (await core.listNamespacedEvent({ namespace: NS })).items.filter((e) => e.reason === "NetworkInitialized");
    for (const uid of [first.uid, second.uid])
      assert.ok(
        initialized.some((e) => e.involvedObject.uid === uid),
        runnerLog().slice(-2000),
      );
    runner = await startNodeRunner(cp, { ...runnerOptions, port });
  });

  // The DaemonSet on an IPv6 node: HOST_IP is an IPv6 address and the runner is given only its
  // port (LISTEN_PORT), so no unbracketed `fd00::1:19443` is ever built.
  test("an IPv6 node: the runner listens on [HOST_IP]:LISTEN_PORT and applies a request signed for that authority", async () => {
    await runner.stop();
    const v6 = await startNodeRunner(cp, { ...runnerOptions, host: "::1" });
    try {
      assert.match(v6.log(), /"listen":"\[::1\]:\d+"/);
      const pod = await createPod("ipv6-node");
      const reply = await sendSigned(v6, APPLY_PATH, applyRequest(pod), { keyid: "fn-1", privateKey: signingKey });
      assert.equal(reply.status, 200, JSON.stringify(reply.body));
      assert.match(await v6.metrics(), /podnet_node_runner_requests_total\{route="apply",result="applied"\} 1/);
    } finally {
      await v6.stop();
      runner = await startNodeRunner(cp, { ...runnerOptions, port });
    }
  });
});
