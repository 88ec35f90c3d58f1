// Attacks on a running node-runner, on real parts: its real entry point as a process, the real
// kube-apiserver with the node-runner's RBAC, real test pods (network namespaces, kubelet-shaped
// cgroups, real iptables). Each attack is refused and changes nothing.
import assert from "node:assert/strict";
import { randomUUID, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { APPLY_PATH } from "../../contract/apply-request.ts";
import { MARK, STATUS_INITIALIZED, STATUS_REFUSED } from "../../contract/mark.ts";
import { DEFAULT_CAPTURE_CONFIG } from "../../contract/capture-config.ts";
import { SIGNATURE_PROFILE, signRequest } from "../../contract/signature.ts";
import { httpStatus, missingBinariesReason, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { clearMarkAs, nodeRunnerTlsOptions, postToRunner, signingKeyDirs, startNodeRunner, type Component, type RunnerReply } from "../support/components.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { createMeshPod, type MeshPod } from "../support/mesh-pods.ts";
import { TestPods, testPodsUnavailableReason } from "../support/test-pods.ts";

const unavailable = testPodsUnavailableReason() ?? missingBinariesReason();
const NODE = "node-a";
const NS = "shop";

type Reply = RunnerReply;

describe("attacks on the node-runner [needs root and control plane]", skipUnlessCI(unavailable), () => {
  let cp: ControlPlane;
  let pods: TestPods;
  let dir: string;
  let keysDir: string;
  let core: k8s.CoreV1Api;
  let signingKey: KeyObject;
  let runner: Component;
  const stateDir = (): string => path.join(dir, "state");

  before(async () => {
    assertAvailable(unavailable);
    cp = await startControlPlane();
    pods = TestPods.create();
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-attacks-"));
    await cp.ensureNamespace(NS);
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    const keys = signingKeyDirs(dir, "fn-1");
    keysDir = keys.publicDir;
    signingKey = keys.signingKey.privateKey;
    // Started once before, as on a node: the second process restores the first one's nonce
    // journal, so requests signed before it started are judged by their nonces.
    runner = await start();
    await runner.stop();
    runner = await start();
  });

  after(async () => {
    await runner.stop();
    await pods.destroy();
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function start(env: NodeJS.ProcessEnv = {}, port?: number): Promise<Component> {
    return startNodeRunner(cp, {
      nodeName: NODE,
      publicKeysDir: keysDir,
      stateDir: stateDir(),
      cgroupRoot: pods.cgroupRoot,
      env,
      ...(port === undefined ? {} : { port }),
    });
  }

  const send = (body: Buffer, headers: Record<string, string>): Promise<Reply> => postToRunner(runner.port, APPLY_PATH, body, headers);
  const post = (r: { body: Buffer; headers: Record<string, string> }): Promise<Reply> => send(r.body, r.headers);

  /** A signed apply request, as the function would send it (authority: the runner's address). */
  function signedApply(pod: MeshPod, options: { capture?: object; now?: number; authority?: string } = {}): { body: Buffer; headers: Record<string, string> } {
    const payload = {
      apiVersion: "podnet/v1",
      kind: "ApplyRequest",
      node: NODE,
      pod: { namespace: NS, name: pod.name, uid: pod.uid, ips: [pod.ip] },
      capture: { ...DEFAULT_CAPTURE_CONFIG, ...options.capture },
      decision: { reason: "needs-rules", policy: "test" },
    };
    const body = Buffer.from(JSON.stringify(payload));
    const authority = options.authority ?? `127.0.0.1:${runner.port}`;
    const headers = signRequest(
      { method: "POST", authority, path: APPLY_PATH, contentType: "application/json", body },
      { keyid: "fn-1", privateKey: signingKey },
      { now: options.now ?? Date.now(), nonce: randomUUID() },
    );
    return { body, headers: { ...headers, host: authority } };
  }

  const rules = (pod: MeshPod): string =>
    pod.sandbox
      .exec(["iptables-save"])
      .split("\n")
      .filter((l) => !l.startsWith("#"))
      .map((l) => l.replace(/\[\d+:\d+\]/g, ""))
      .join("\n");

  async function marks(pod: MeshPod): Promise<Record<string, string>> {
    const p = await core.readNamespacedPod({ namespace: NS, name: pod.name });
    return Object.fromEntries(Object.entries(p.metadata?.annotations ?? {}).filter(([k]) => (Object.values(MARK) as string[]).includes(k)));
  }

  let podCount = 0;
  const newPod = (): Promise<MeshPod> => createMeshPod(core, pods, { namespace: NS, name: `victim-${++podCount}`, nodeName: NODE });

  test("attack 1: a request replayed in the last second of its signature window is refused", async () => {
    const pod = await newPod();
    // Sign so that the send falls in the window's last second: created + validity + skew.
    while (Date.now() % 1000 > 400) await new Promise((r) => setTimeout(r, 20));
    const last = SIGNATURE_PROFILE.validitySeconds + SIGNATURE_PROFILE.clockSkewSeconds;
    const { body, headers } = signedApply(pod, { now: (Math.floor(Date.now() / 1000) - last) * 1000 });
    const first = await send(body, headers);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    const before = rules(pod);
    for (let i = 0; i < 3; i++) {
      const replay = await send(body, headers);
      assert.equal(replay.status, 401, JSON.stringify(replay.body));
      assert.equal(replay.body.reason, "replay");
    }
    assert.equal(rules(pod), before);
  });

  test("attack 2: a request replayed after the node-runner was killed (-9) and restarted is refused", async () => {
    const pod = await newPod();
    const { body, headers } = signedApply(pod);
    assert.equal((await send(body, headers)).status, 200);
    const port = runner.port;
    runner.process.kill("SIGKILL");
    await new Promise((r) => runner.process.once("exit", r));
    runner = await start({}, port);
    // The mark cleared as only a node-runner may (the admission policy refuses anyone else).
    const runnerToken = await cp.serviceAccountToken("podnet-system", "podnet-node-runner", NODE);
    await clearMarkAs(cp.kubeConfig(runnerToken).makeApiClient(k8s.CoreV1Api), pod);
    const replay = await send(body, headers);
    assert.equal(replay.status, 401, JSON.stringify(replay.body));
    assert.equal(replay.body.reason, "replay");
    assert.deepEqual(await marks(pod), {}, "the replay marked nothing");
  });

  test("attack 4: cgroup look-alikes holding the victim's IP never get the victim's rules", async () => {
    const pod = await newPod();
    const impostors = [
      pods.addImpostor({ ip: pod.ip, cgroupPath: `user.slice/evil-pod${pod.uid}/x` }),
      pods.addImpostor({ ip: pod.ip, cgroupPath: `kubepods/besteffort/pod${randomUUID()}/ctr/pod${pod.uid}` }),
    ];
    const before = impostors.map((x) => pods.execIn(x.netns, ["iptables-save"]));
    const reply = await post(signedApply(pod));
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal(reply.body.netns, pod.sandbox.netnsInode(), "the victim's own netns was programmed");
    assert.deepEqual(
      impostors.map((x) => pods.execIn(x.netns, ["iptables-save"])),
      before,
      "the impostors' netns are untouched",
    );
    assert.equal((await marks(pod))[MARK.netns], pod.sandbox.netnsInode());
  });

  test("attack 4b: a second netns in the pod's own cgroup holding its IP → 409 ambiguous, nothing applied", async () => {
    const pod = await newPod();
    const slice = `kubepods-besteffort-pod${pod.uid.replace(/-/g, "_")}.slice`;
    const impostor = pods.addImpostor({ ip: pod.ip, cgroupPath: `kubepods.slice/kubepods-besteffort.slice/${slice}/evil.scope` });
    const before = rules(pod);
    const reply = await post(signedApply(pod));
    assert.equal(reply.status, 409, JSON.stringify(reply.body));
    assert.equal(reply.body.reason, "ambiguous-netns");
    assert.equal(rules(pod), before);
    assert.doesNotMatch(pods.execIn(impostor.netns, ["iptables-save"]), /ISTIO/);
    assert.deepEqual(await marks(pod), {});
  });

  test("attack 7: a frozen API server → 503 api-unavailable with Retry-After, and the pod is not stuck", async () => {
    const pod = await newPod();
    const port = runner.port;
    await runner.stop();
    runner = await start({ API_TIMEOUT_MS: "800" }, port);
    process.kill(cp.apiserverPid, "SIGSTOP");
    let reply: Reply;
    const t0 = Date.now();
    try {
      reply = await post(signedApply(pod));
    } finally {
      process.kill(cp.apiserverPid, "SIGCONT");
    }
    assert.equal(reply.status, 503, JSON.stringify(reply.body));
    assert.equal(reply.body.reason, "api-unavailable");
    assert.ok(Number(reply.headers["retry-after"]) > 0);
    assert.ok(Date.now() - t0 < 5000, "answered at the deadline, not when the API server came back");
    const again = await post(signedApply(pod));
    assert.equal(again.status, 200, JSON.stringify(again.body));
  });

  test("attack 8: an unresolvable owner group is 422 naming the field; a foreign rule on an ISTIO_ chain is 409; other rules for an initialized pod are 409; never 500", async () => {
    const pod = await newPod();
    const group = await post(signedApply(pod, { capture: { ownerGroupsInclude: "nosuchgroup-podnet" } }));
    assert.equal(group.status, 422, JSON.stringify(group.body));
    assert.equal(group.body.reason, "invalid-capture");
    assert.match(String(group.body.detail), /owner group/);
    // The pod's configuration can never be applied on this node: marked refused, saying why.
    assert.deepEqual(await marks(pod), {
      [MARK.status]: STATUS_REFUSED,
      [MARK.reason]: 'invalid capture configuration: owner group "nosuchgroup-podnet" is not known on node node-a: use a numeric GID',
    });

    // Someone else's chain jumps to an ISTIO_ chain these rules do not keep: -X must fail.
    pod.sandbox.exec(["iptables", "-t", "mangle", "-N", "ISTIO_DIVERT"]);
    pod.sandbox.exec(["iptables", "-t", "mangle", "-N", "FOREIGN"]);
    pod.sandbox.exec(["iptables", "-t", "mangle", "-A", "FOREIGN", "-j", "ISTIO_DIVERT"]);
    const foreign = rules(pod);
    const conflict = await post(signedApply(pod));
    assert.equal(conflict.status, 409, JSON.stringify(conflict.body));
    assert.equal(conflict.body.reason, "rules-refused");
    assert.equal(rules(pod), foreign, "the refused transaction changed nothing");
    assert.match((await marks(pod))[MARK.reason] ?? "", /^the rules were refused: /);

    pod.sandbox.exec(["iptables", "-t", "mangle", "-F", "FOREIGN"]);
    pod.sandbox.exec(["iptables", "-t", "mangle", "-X", "FOREIGN"]);
    const tproxy = await post(signedApply(pod, { capture: { inboundInterceptionMode: "TPROXY" } }));
    assert.equal(tproxy.status, 200, JSON.stringify(tproxy.body));
    const initialized = await marks(pod);
    assert.equal(initialized[MARK.status], STATUS_INITIALIZED);
    // A replica deciding under another policy: the pod keeps the rules it started with.
    const before = rules(pod);
    const other = await post(signedApply(pod));
    assert.equal(other.status, 409, JSON.stringify(other.body));
    assert.equal(other.body.reason, "initialized-with-other-rules");
    assert.match(String(other.body.detail), new RegExp(`with rules ${String(tproxy.body.rules)}`));
    assert.equal(rules(pod), before, "nothing changed");
    assert.deepEqual(await marks(pod), initialized, "its mark names the rules that run");
    const same = await post(signedApply(pod, { capture: { inboundInterceptionMode: "TPROXY" } }));
    assert.equal(same.status, 200, JSON.stringify(same.body));
    assert.equal(same.body.result, "unchanged");
  });

  test("attack 9c: a request signed for another address → 421, nothing applied", async () => {
    const pod = await newPod();
    const before = rules(pod);
    const reply = await post(signedApply(pod, { authority: "10.99.0.1:9443" }));
    assert.equal(reply.status, 421, JSON.stringify(reply.body));
    assert.equal(reply.body.reason, "wrong-authority");
    assert.equal(rules(pod), before);
    assert.deepEqual(await marks(pod), {});
  });

  /** A TLS connection to the runner on which the test writes by hand. */
  function rawConnection(): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: runner.port, ...nodeRunnerTlsOptions() }, () => {
        resolve(socket);
      });
      socket.on("error", reject);
    });
  }
  /** What the server writes until it closes the connection (or `ms` passes). */
  function readUntilClosed(socket: tls.TLSSocket, ms: number): Promise<{ text: string; closed: boolean }> {
    return new Promise((resolve) => {
      let text = "";
      socket.on("data", (c: Buffer) => (text += c.toString()));
      const timer = setTimeout(() => {
        resolve({ text, closed: false });
      }, ms);
      socket.on("close", () => {
        clearTimeout(timer);
        resolve({ text, closed: true });
      });
      socket.on("error", () => undefined);
    });
  }

  test("attack 10: an unsigned upload is refused from its headers, before its body, and the connection ends within the request timeout", async () => {
    const socket = await rawConnection();
    let text = "";
    const answered = new Promise<void>((resolve) => {
      socket.on("data", (c: Buffer) => {
        text += c.toString();
        if (text.includes("\r\n\r\n")) resolve();
      });
    });
    const closed = readUntilClosed(socket, 15_000);
    socket.write(`POST ${APPLY_PATH} HTTP/1.1\r\nhost: 127.0.0.1:${runner.port}\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n`);
    // Not a byte of the body is sent: the answer comes anyway.
    await answered;
    assert.match(text, /^HTTP\/1\.1 401 /);
    assert.match(text, /"reason":"missing-signature"/);
    assert.ok((await closed).closed, "the server ends the connection whose body never came");
    socket.destroy();
  });

  test("attack 11: slow headers and slow bodies are cut off, and signed applies are served meanwhile", async () => {
    const slow = await Promise.all(Array.from({ length: 20 }, () => rawConnection()));
    const cut = slow.map((s) => readUntilClosed(s, 30_000));
    // Half send headers a byte at a time and never finish; half send a signed request's
    // headers, then its body slower than any request may take.
    const pod = await newPod();
    const signedSlow = signedApply(pod);
    slow.forEach((socket, i) => {
      if (i % 2 === 0) socket.write(`POST ${APPLY_PATH} HTTP/1.1\r\nhost: 127.0.0.1`);
      else
        socket.write(
          `POST ${APPLY_PATH} HTTP/1.1\r\n${Object.entries({
            ...signedSlow.headers,
            "content-type": "application/json",
            "content-length": String(signedSlow.body.length),
          })
            .map(([k, v]) => `${k}: ${v}`)
            .join("\r\n")}\r\n\r\n{`,
        );
    });
    const drip = setInterval(() => {
      for (const socket of slow) if (!socket.destroyed) socket.write(" ");
    }, 500);
    try {
      const t0 = Date.now();
      const served = await post(signedApply(await newPod()));
      assert.equal(served.status, 200, JSON.stringify(served.body));
      const closedAfter = await Promise.all(cut);
      assert.ok(
        closedAfter.every((c) => c.closed),
        "every slow connection was closed by the server",
      );
      assert.ok(Date.now() - t0 < 25_000, "within the request timeout and its check interval");
    } finally {
      clearInterval(drip);
      for (const socket of slow) socket.destroy();
    }
    assert.deepEqual(await marks(pod), {}, "the slow signed request applied nothing");
  });

  test("attack 12: a command helper that dies is a 503 the function retries, never 409 or 500", async () => {
    const pod = await newPod();
    const port = runner.port;
    await runner.stop();
    // A helper that exits at once, answering nothing: every command it was given fails with it.
    runner = await start({ NETNS_EXEC: "/bin/true" }, port);
    try {
      const before = rules(pod);
      const reply = await post(signedApply(pod));
      assert.equal(reply.status, 503, JSON.stringify(reply.body));
      assert.equal(reply.body.reason, "node-unavailable");
      assert.ok(Number(reply.headers["retry-after"]) > 0);
      assert.equal(rules(pod), before);
      assert.deepEqual(await marks(pod), {});
    } finally {
      await runner.stop();
      runner = await start({}, port);
    }
    const again = await post(signedApply(pod));
    assert.equal(again.status, 200, JSON.stringify(again.body));
  });

  test("attack 15: metrics are served only on their own port, only to a token allowed to get /metrics; a flood of junk tokens leaves the scraper served", async () => {
    const tlsOptions = nodeRunnerTlsOptions();
    const metricsUrl = `${runner.metricsUrl}/metrics`;
    // Prometheus' usual grant: get on the non-resource URL /metrics, bound to its ServiceAccount.
    await cp.applyYaml(`
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: test-metrics-reader }
rules: [{ nonResourceURLs: ["/metrics"], verbs: ["get"] }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: test-metrics-reader }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: test-metrics-reader }
subjects: [{ kind: ServiceAccount, name: prometheus, namespace: monitoring }]
`);
    const scraper = await cp.serviceAccountToken("monitoring", "prometheus");
    const tenant = await cp.serviceAccountToken(NS, "default");

    assert.equal(await httpStatus(`${runner.url}/metrics`, tlsOptions), 404, "the signed API serves no metrics");
    assert.equal(await httpStatus(metricsUrl, tlsOptions), 401, "no token");
    assert.equal(await httpStatus(metricsUrl, { ...tlsOptions, token: "not-a-token" }), 401, "a token the API server does not know");
    assert.equal(await httpStatus(metricsUrl, { ...tlsOptions, token: tenant }), 403, "a valid token of a user not allowed to get /metrics");
    assert.equal(await httpStatus(metricsUrl, { ...tlsOptions, token: scraper }), 200, "Prometheus' ServiceAccount");

    // 200 scrapes with distinct junk tokens at once: each costs at most a bounded number of
    // reviews (the rest answered 503 at once), and the allowed scraper is answered meanwhile.
    const flood = Promise.all(
      Array.from({ length: 200 }, (_, i) => httpStatus(metricsUrl, { ...tlsOptions, token: `junk-${i}-${randomUUID()}` }).catch(() => 0)),
    );
    assert.equal(await httpStatus(metricsUrl, { ...tlsOptions, token: scraper }), 200, "served from its cached verdict during the flood");
    const statuses = await flood;
    assert.ok(
      statuses.every((status) => [401, 503, 0].includes(status)),
      `only refusals: ${[...new Set(statuses)].join(", ")}`,
    );
    assert.match(await runner.metrics(), /podnet_node_runner_metrics_scrapes_refused_total\{status="401"\} [1-9]/);
    // And the signed API kept working.
    const pod = await newPod();
    assert.equal((await post(signedApply(pod))).status, 200);
  });
});
