// Smoke test of the real control plane: a pod created through kube-apiserver reaches a
// receiver as a CloudEvent sent by Knative's real ApiServerSource adapter, shaped as Knative
// documents (type, source, subject, extensions; binary mode). Needs the binaries from test/controlplane/build.sh.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { HTTP, type CloudEventV1 } from "cloudevents";
import { API_CONNECTIONS, apiRequest, podPath, type ApiConnection } from "../../lib/kube-http.ts";
import { KubeClusterReader } from "../../functions/kube.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { ADAPTER_HEALTH_PORT, freePort, missingBinariesReason, startControlPlane, type Adapter, type ControlPlane } from "./harness.ts";

const missing = missingBinariesReason();

interface Received {
  event: CloudEventV1<unknown>;
  headers: http.IncomingHttpHeaders;
}

/** A bare CloudEvents receiver: records every event, answers 202. */
async function startReceiver(): Promise<{
  url: string;
  events: Received[];
  waitFor: (pred: (r: Received) => boolean, ms?: number) => Promise<Received>;
  close: () => Promise<void>;
}> {
  const events: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const parsed = HTTP.toEvent({ headers: req.headers, body });
      for (const event of Array.isArray(parsed) ? parsed : [parsed]) events.push({ event, headers: req.headers });
      res.writeHead(202).end();
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${port}/`,
    events,
    waitFor: async (pred, ms = 20_000) => {
      const deadline = Date.now() + ms;
      for (;;) {
        const hit = events.find(pred);
        if (hit !== undefined) return hit;
        if (Date.now() > deadline)
          throw new Error(`no matching event within ${ms} ms; got ${events.map((e) => `${e.event.type} ${e.event.subject ?? ""}`).join(", ") || "none"}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => {
          resolve();
        });
      }),
  };
}

describe("control plane [needs control plane]", skipUnlessCI(missing), () => {
  let cp: ControlPlane;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let adapter: Adapter;
  let core: k8s.CoreV1Api;
  const ns = "smoke";

  before(async () => {
    assertAvailable(missing);
    cp = await startControlPlane();
    receiver = await startReceiver();
    adapter = await cp.startAdapter({ sink: receiver.url, labelSelector: "security.istio.io/tlsMode=istio" });
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await cp.ensureNamespace(ns);
  });

  after(async () => {
    await adapter.stop();
    await receiver.close();
    const dir = cp.dir;
    const pids = cp.pids();
    await cp.stop();
    assert.equal(existsSync(dir), false, "run directory removed");
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), `process ${pid} still running`);
  });

  test("RBAC is enforced: a fresh ServiceAccount cannot list pods", async () => {
    const token = await cp.serviceAccountToken(ns, "nobody");
    const api = cp.kubeConfig(token).makeApiClient(k8s.CoreV1Api);
    await assert.rejects(api.listNamespacedPod({ namespace: ns }), (err: unknown) => err instanceof k8s.ApiException && err.code === 403);
  });

  test("a mesh pod's add, update and delete arrive as ApiServerSource CloudEvents", async () => {
    const name = "web-1";
    const created = await core.createNamespacedPod({
      namespace: ns,
      body: {
        metadata: { name, labels: { "security.istio.io/tlsMode": "istio" } },
        spec: { nodeName: "node-a", containers: [{ name: "app", image: "example/app" }] },
      },
    });
    const subject = `/apis/v1/namespaces/${ns}/pods/${name}`;
    const add = await receiver.waitFor((r) => r.event.type === "dev.knative.apiserver.resource.add" && r.event.subject === subject);
    const e = add.event;
    assert.equal(e.source, cp.server);
    assert.equal(e.datacontenttype, "application/json");
    assert.equal(e.kind, "Pod");
    assert.equal(e.apiversion, "v1");
    assert.equal(e.name, name);
    assert.equal(e.namespace, ns);
    assert.match(e.id, /^[0-9a-f-]{36}$/);
    // Binary content mode: attributes in ce-* headers, the object itself as the body.
    assert.equal(add.headers["ce-type"], "dev.knative.apiserver.resource.add");
    assert.equal(add.headers["content-type"], "application/json");
    const data = e.data as { metadata: { uid: string; name: string }; spec: { nodeName: string } };
    assert.equal(data.metadata.uid, created.metadata?.uid);
    assert.equal(data.spec.nodeName, "node-a");

    await core.patchNamespacedPod(
      { name, namespace: ns, body: { metadata: { annotations: { touched: "yes" } } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    const update = await receiver.waitFor((r) => r.event.type === "dev.knative.apiserver.resource.update" && r.event.subject === subject);
    assert.equal(
      (update.event.data as { metadata: { annotations?: Record<string, string> } }).metadata.annotations?.touched,
      "yes",
      "update carries the new state",
    );
    assert.notEqual(update.event.id, e.id);

    await core.deleteNamespacedPod({ name, namespace: ns, gracePeriodSeconds: 0 });
    await receiver.waitFor((r) => r.event.type === "dev.knative.apiserver.resource.delete" && r.event.subject === subject);
  });

  test("the server-side label selector keeps non-mesh pods out of the stream", async () => {
    await core.createNamespacedPod({ namespace: ns, body: { metadata: { name: "plain" }, spec: { containers: [{ name: "app", image: "example/app" }] } } });
    await core.createNamespacedPod({
      namespace: ns,
      body: { metadata: { name: "marker", labels: { "security.istio.io/tlsMode": "istio" } }, spec: { containers: [{ name: "app", image: "example/app" }] } },
    });
    // Events arrive in order on one watch: once the later mesh pod is seen, the plain one would have been too.
    await receiver.waitFor((r) => r.event.subject === `/apis/v1/namespaces/${ns}/pods/marker`);
    assert.equal(
      receiver.events.some((r) => r.event.subject === `/apis/v1/namespaces/${ns}/pods/plain`),
      false,
    );
  });

  test("kube-http: a burst of calls shares at most API_CONNECTIONS connections", async () => {
    const api: ApiConnection = { server: new URL(cp.server), ca: cp.ca, token: () => cp.adminToken };
    const port = Number(new URL(cp.server).port);
    const others = socketsTo(port); // the other tests' clients
    const calls = await Promise.all(Array.from({ length: 60 }, (_, i) => apiRequest(api, "GET", podPath(ns, `absent-${i}`)).catch((err: unknown) => err)));
    assert.equal(calls.length, 60);
    for (const answer of calls) assert.match(String(answer), /404/);
    // This process's TCP connections to the API server: the calls' few.
    const open = socketsTo(port) - others;
    assert.ok(open >= 1 && open <= API_CONNECTIONS, `${open} connections for 60 calls`);
  });

  test("the function's read of an event's pod: as of the event's resource version or later, from the API server", async () => {
    const api: ApiConnection = { server: new URL(cp.server), ca: cp.ca, token: () => cp.adminToken };
    const reader = new KubeClusterReader(api);
    const created = await core.createNamespacedPod({
      namespace: ns,
      body: { metadata: { name: "versioned" }, spec: { containers: [{ name: "app", image: "example/app" }] } },
    });
    const version = created.metadata?.resourceVersion ?? "";
    await core.patchNamespacedPod(
      { name: "versioned", namespace: ns, body: { metadata: { annotations: { later: "yes" } } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
    // Not older than the event: the later state, never the event's own.
    const read = await reader.getPod(ns, "versioned", version);
    assert.equal(read?.metadata.annotations?.later, "yes");
    assert.equal(await reader.getPod(ns, "absent", version), undefined);
    // "0" (any version, however stale) and what is not a version: a quorum read instead.
    for (const odd of ["0", "", "12a", "-1", "1".repeat(30)]) assert.equal((await reader.getPod(ns, "versioned", odd))?.metadata.annotations?.later, "yes");
    // A version the API server has not reached (a forged event's): it waits and refuses, and
    // the pod is read as it is now.
    assert.equal((await reader.getPod(ns, "versioned", "999999999999"))?.metadata.annotations?.later, "yes");
    assert.equal(await reader.getPod(ns, "absent", "999999999999"), undefined);
  });

  test("the adapter's fixed health port is served while it runs", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      http
        .get(`http://127.0.0.1:${ADAPTER_HEALTH_PORT}/`, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on("error", reject);
    });
    assert.ok(status > 0);
  });
});

describe("Knative CRDs on the local API server [needs control plane]", skipUnlessCI(missing), () => {
  let cp: ControlPlane;
  before(async () => {
    assertAvailable(missing);
    cp = await startControlPlane();
  });
  after(async () => {
    await cp.stop();
  });

  test("ApiServerSource, PingSource, Broker, Trigger and Service can be created", async () => {
    const names = await cp.installCrds();
    for (const crd of [
      "apiserversources.sources.knative.dev",
      "pingsources.sources.knative.dev",
      "brokers.eventing.knative.dev",
      "triggers.eventing.knative.dev",
      "services.serving.knative.dev",
    ]) {
      assert.ok(names.includes(crd), `${crd} installed`);
    }
    await cp.ensureNamespace("podnet-system");
    const objects = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
    const created = (await objects.createNamespacedCustomObject({
      group: "sources.knative.dev",
      version: "v1",
      namespace: "podnet-system",
      plural: "apiserversources",
      body: {
        apiVersion: "sources.knative.dev/v1",
        kind: "ApiServerSource",
        metadata: { name: "pods" },
        spec: {
          mode: "Resource",
          resources: [{ apiVersion: "v1", kind: "Pod", selector: { matchLabels: { "security.istio.io/tlsMode": "istio" } } }],
          serviceAccountName: "podnet-apiserversource",
          sink: { ref: { apiVersion: "serving.knative.dev/v1", kind: "Service", name: "podnet-decision" } },
        },
      },
    })) as { metadata: { uid?: string } };
    assert.ok(created.metadata.uid);
    const service = (await objects.createNamespacedCustomObject({
      group: "serving.knative.dev",
      version: "v1",
      namespace: "podnet-system",
      plural: "services",
      body: {
        apiVersion: "serving.knative.dev/v1",
        kind: "Service",
        metadata: { name: "podnet-decision" },
        spec: { template: { spec: { containers: [{ image: "example/decision" }] } } },
      },
    })) as { metadata: { uid?: string } };
    assert.ok(service.metadata.uid);
  });
});

describe("control plane cleanup", () => {
  test("a run killed before stop() is reaped by the next start: processes killed, directory removed", async () => {
    const { spawn, spawnSync } = await import("node:child_process");
    const { mkdirSync, writeFileSync } = await import("node:fs");
    const os = await import("node:os");
    const path = await import("node:path");
    const { reapStaleRuns } = await import("./harness.ts");
    // A pid that is certainly dead: a process that already exited.
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid;
    const dir = path.join(os.tmpdir(), `pnc-cp-${dead}-staletest`);
    mkdirSync(dir);
    const orphan = spawn("sleep", ["300"], { detached: true, stdio: "ignore" });
    assert.ok(orphan.pid !== undefined);
    writeFileSync(path.join(dir, "pids"), `${orphan.pid}\n`);
    const exited = new Promise((resolve) => orphan.once("exit", resolve));
    assert.ok(reapStaleRuns() >= 1);
    await exited;
    assert.equal(existsSync(dir), false);
  });
});

/** Established TCP connections of this process to a local port (from /proc: its socket descriptors). */
function socketsTo(port: number): number {
  const mine = new Set<string>();
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1];
      if (inode !== undefined) mine.add(inode);
    } catch {
      // closed meanwhile
    }
  }
  let count = 0;
  for (const table of ["/proc/self/net/tcp", "/proc/self/net/tcp6"]) {
    for (const line of readFileSync(table, "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // remote address:port in hex, state 01 = ESTABLISHED, then the socket inode.
      if (f[2]?.endsWith(`:${port.toString(16).toUpperCase().padStart(4, "0")}`) && f[3] === "01" && mine.has(f[9] ?? "")) count++;
    }
  }
  return count;
}
