// The node-runner as it runs on a node: its real entry point as a process, real test pods,
// the real kube-apiserver with the node-runner's own ServiceAccount under the RBAC of
// config/node-runner/rbac.yaml. Requests are signed as the decision function signs them.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync, randomUUID, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { APPLY_PATH, MARK, REMOVE_PATH, STATUS_INITIALIZED } from "../../contract/apply-request.ts";
import { DEFAULT_CAPTURE_CONFIG } from "../../contract/capture-config.ts";
import { signRequest } from "../../contract/signature.ts";
import { freePort, missingBinariesReason, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { TestPods, testPodsUnavailableReason, type TestPod } from "../support/test-pods.ts";

const root = path.resolve(import.meta.dirname, "../..");
const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
const NODE = "node-a";
const NS = "shop";

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
}

describe("node-runner server [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let cp: ControlPlane;
  let pods: TestPods;
  let runner: ChildProcess;
  let port: number;
  let dir: string;
  let core: k8s.CoreV1Api;
  let signingKey: KeyObject;
  let runnerLog = "";

  before(async () => {
    assertAvailable(unavailable);
    cp = await startControlPlane();
    pods = TestPods.create();
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-runner-"));
    await cp.applyManifest(path.join(root, "config/node-runner/rbac.yaml"));
    await cp.ensureNamespace(NS);
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);

    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    signingKey = privateKey;
    const keysDir = path.join(dir, "keys");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(keysDir);
    writeFileSync(path.join(keysDir, "fn-1.pem"), publicKey.export({ type: "spki", format: "pem" }));

    const token = await cp.serviceAccountToken("podnet-system", "podnet-node-runner");
    port = await freePort();
    runner = spawn(process.execPath, ["--import", "tsx", path.join(root, "node-runner/main.ts")], {
      cwd: root,
      env: {
        ...process.env,
        NODE_NAME: NODE,
        LISTEN_ADDRESS: `127.0.0.1:${port}`,
        PUBLIC_KEYS_DIR: keysDir,
        KUBECONFIG: cp.writeKubeconfig("node-runner", token),
        STATE_DIR: path.join(dir, "state"),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    runner.stdout?.on("data", (c: Buffer) => (runnerLog += c.toString()));
    runner.stderr?.on("data", (c: Buffer) => (runnerLog += c.toString()));
    const deadline = Date.now() + 20_000;
    while ((await get("/readyz").catch(() => 0)) !== 200) {
      if (Date.now() > deadline || runner.exitCode !== null) throw new Error(`node-runner did not become ready:\n${runnerLog}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  after(async () => {
    if (runner.exitCode === null) {
      const exited = new Promise((r) => runner.once("exit", r));
      runner.kill("SIGTERM");
      await exited;
    }
    await pods.destroy();
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function get(p: string): Promise<number> {
    return new Promise((resolve, reject) => {
      http.get({ host: "127.0.0.1", port, path: p }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on("error", reject);
    });
  }

  function send(p: string, body: Buffer, headers: Record<string, string>): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, path: p, method: "POST", headers: { "content-type": "application/json", ...headers } }, (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => {
          let parsed: Record<string, unknown> = {};
          try {
            parsed = JSON.parse(text) as Record<string, unknown>;
          } catch {
            parsed = { raw: text };
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
        });
      });
      req.on("error", reject);
      req.end(body);
    });
  }

  function signed(p: string, payload: unknown, options: { now?: number; keyid?: string; key?: KeyObject } = {}): { body: Buffer; headers: Record<string, string> } {
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

  /**
   * A pod in the API bound to this node and its sandbox: a test pod whose cgroup carries the
   * UID the API assigned, with the API status showing the sandbox's IP.
   */
  async function createPod(name: string, overrides: { nodeName?: string; hostNetwork?: boolean } = {}): Promise<{ uid: string; ip: string; sandbox: TestPod }> {
    const created = await core.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: { name, labels: { "security.istio.io/tlsMode": "istio" } },
        spec: { nodeName: overrides.nodeName ?? NODE, hostNetwork: overrides.hostNetwork ?? false, containers: [{ name: "app", image: "example/app" }] },
      },
    });
    const uid = created.metadata?.uid ?? "";
    const sandbox = pods.add({ name, uid });
    await core.patchNamespacedPodStatus(
      { name, namespace: NS, body: { status: { podIP: sandbox.ip, podIPs: [{ ip: sandbox.ip }], hostIP: "127.0.0.1" } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    return { uid, ip: sandbox.ip, sandbox };
  }

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
    assert.equal(first.status, 200, JSON.stringify(first.body) + runnerLog.slice(-2000));
    assert.equal(first.body.result, "applied");
    assert.equal(first.body.netns, sandbox.netnsInode());
    assert.match(sandbox.exec(["iptables-save"]), /-A ISTIO_OUTPUT -j ISTIO_REDIRECT/);

    const marked = await core.readNamespacedPod({ name: "web-1", namespace: NS });
    assert.equal(marked.metadata?.annotations?.[MARK.status], STATUS_INITIALIZED);
    assert.equal(marked.metadata?.annotations?.[MARK.netns], sandbox.netnsInode());
    assert.equal(marked.metadata?.annotations?.[MARK.rules], first.body.rules);

    const events = await core.listNamespacedEvent({ namespace: NS });
    assert.ok(events.items.some((e) => e.reason === "NetworkInitialized" && e.involvedObject.uid === uid), `no NetworkInitialized Event; node-runner log:\n${runnerLog.slice(-3000)}`);

    const again = await signedPost(APPLY_PATH, req);
    assert.equal(again.body.result, "unchanged");

    const removed = await signedPost(REMOVE_PATH, { apiVersion: "podnet/v1", kind: "RemoveRequest", node: NODE, pod: req.pod, decision: req.decision });
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assert.equal(removed.body.result, "removed");
    assert.doesNotMatch(sandbox.exec(["iptables-save"]), /ISTIO/);
    const cleared = await core.readNamespacedPod({ name: "web-1", namespace: NS });
    assert.equal(cleared.metadata?.annotations?.[MARK.status], undefined);
  });
});
