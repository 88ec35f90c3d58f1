// The operator's CLI reaches a cluster as kubectl does (cli/kube-client.ts): a kubeconfig with a
// client certificate, an exec credential plugin (the way EKS, GKE and AKS hand out tokens),
// several contexts, a proxy-url, KUBECONFIG naming several files; against the real API server,
// with `pnc status` and `pnc keys ensure` as the commands. A kubeconfig that cannot work says why
// in one line and changes nothing.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { stringify } from "yaml";
import { missingBinariesReason } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { controlPlaneForSuite } from "../support/suite.ts";

const root = path.resolve(import.meta.dirname, "../..");
const missing = missingBinariesReason();

/** `pnc <args>` as an operator runs it, with only the environment given (no ~/.kube/config of the machine's). */
function pnc(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  // Asynchronous: the proxy runs in this process while pnc waits on it.
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(root, "cli/pnc.ts"), ...args], {
      cwd: root,
      env: { PATH: process.env.PATH, HOME: home, ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (status) => {
      resolve({ status, stdout, stderr });
    });
  });
}

let home = "";
let dir = "";

interface KubeconfigUser {
  readonly name: string;
  readonly user: Record<string, unknown>;
}

describe("pnc reaches a cluster as kubectl does [needs control plane]", skipUnlessCI(missing), () => {
  const controlPlane = controlPlaneForSuite(missing);
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-cli-"));
    home = path.join(dir, "home");
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** A kubeconfig file with these users, one context each (named as the user), the first current. */
  const kubeconfig = (name: string, users: readonly KubeconfigUser[], cluster: Record<string, unknown> = {}): string => {
    const cp = controlPlane();
    const file = path.join(dir, `${name}.kubeconfig`);
    writeFileSync(
      file,
      stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{ name: "lab", cluster: { server: cp.server, "certificate-authority": cp.caFile, ...cluster } }],
        users,
        contexts: users.map((u) => ({ name: u.name, context: { cluster: "lab", user: u.name, namespace: "default" } })),
        "current-context": users[0]?.name,
      }),
      { mode: 0o600 },
    );
    return file;
  };

  /** A mesh pod object in `namespace` (never scheduled: status only reads it). */
  const meshPod = async (namespace: string, name: string): Promise<void> => {
    const cp = controlPlane();
    await cp.ensureNamespace(namespace);
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await core.createNamespacedPod({
      namespace,
      body: { metadata: { name, labels: { "security.istio.io/tlsMode": "istio" } }, spec: { containers: [{ name: "app", image: "app" }] } },
    });
  };

  test("a client certificate: the user the API server names from it lists the mesh pods and creates the keys", async () => {
    const cp = controlPlane();
    await meshPod("cert-shop", "web");
    const cert = cp.clientCertificate("ops-cert", ["system:masters"]);
    const file = kubeconfig("cert", [{ name: "ops", user: { "client-certificate": cert.cert, "client-key": cert.key } }]);
    const status = await pnc(["status", "-n", "cert-shop", "--kubeconfig", file]);
    assert.equal(status.status, 0, status.stderr);
    assert.match(status.stdout, /^cert-shop\s+web\s+none/m);

    await cp.ensureNamespace("cert-keys");
    const keys = await pnc(["keys", "ensure", "--namespace", "cert-keys", "--kubeconfig", file]);
    assert.equal(keys.status, 0, keys.stderr);
    assert.equal(keys.stdout.match(/created/g)?.length, 4, keys.stdout);
  });

  test("an exec credential plugin (client.authentication.k8s.io/v1): its token is used, and it is run for it", async () => {
    const cp = controlPlane();
    await meshPod("exec-shop", "api");
    // A ServiceAccount allowed to list pods and Events, and nothing else: the plugin hands out its token.
    const token = await cp.serviceAccountToken("exec-shop", "reader");
    const rbac = cp.kubeConfig().makeApiClient(k8s.RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({
      namespace: "exec-shop",
      body: { metadata: { name: "reader" }, rules: [{ apiGroups: [""], resources: ["pods", "events"], verbs: ["list"] }] },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: "exec-shop",
      body: {
        metadata: { name: "reader" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "reader" },
        subjects: [{ kind: "ServiceAccount", name: "reader", namespace: "exec-shop" }],
      },
    });
    const calls = path.join(dir, "plugin-calls");
    const plugin = path.join(dir, "credential-plugin.mjs");
    writeFileSync(
      plugin,
      `import { appendFileSync } from "node:fs";
appendFileSync(${JSON.stringify(calls)}, "called\\n");
process.stdout.write(JSON.stringify({ apiVersion: "client.authentication.k8s.io/v1", kind: "ExecCredential", status: { token: ${JSON.stringify(token)} } }));
`,
    );
    const file = kubeconfig("exec", [
      {
        name: "cloud",
        user: { exec: { apiVersion: "client.authentication.k8s.io/v1", command: process.execPath, args: [plugin], interactiveMode: "Never" } },
      },
    ]);
    const status = await pnc(["status", "-n", "exec-shop", "--kubeconfig", file]);
    assert.equal(status.status, 0, status.stderr);
    assert.match(status.stdout, /^exec-shop\s+api\s+none/m);
    assert.match(readFileSync(calls, "utf8"), /^called$/m, "the plugin ran");

    // The same identity may not create keys: one line with the API server's reason, nothing made.
    const keys = await pnc(["keys", "ensure", "--namespace", "exec-shop", "--kubeconfig", file]);
    assert.equal(keys.status, 1);
    assert.match(keys.stderr, /^pnc keys ensure: the API server answered 403: .*forbidden.*; nothing replaced\n$/);
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    assert.equal((await core.listNamespacedSecret({ namespace: "exec-shop" })).items.length, 0);
  });

  test("contexts: the current one, another with --context, and KUBECONFIG naming two files merged as kubectl merges them", async () => {
    const cp = controlPlane();
    await meshPod("ctx-shop", "one");
    const good = { name: "admin", user: { token: cp.adminToken } };
    const bad = { name: "stale", user: { token: "expired" } };
    const file = kubeconfig("contexts", [bad, good]);
    const current = await pnc(["status", "-n", "ctx-shop", "--kubeconfig", file]);
    assert.equal(current.status, 1);
    assert.equal(current.stderr, "pnc status: the API server answered 401: Unauthorized\n", "the current context is used, and its failure is one line");
    const chosen = await pnc(["status", "-n", "ctx-shop", "--kubeconfig", file, "--context", "admin"]);
    assert.equal(chosen.status, 0, chosen.stderr);
    assert.match(chosen.stdout, /^ctx-shop\s+one\s+none/m);
    const unknown = await pnc(["status", "--kubeconfig", file, "--context", "prod"]);
    assert.equal(unknown.status, 64);
    assert.match(unknown.stderr, /context "prod" is not in the kubeconfig \(it has: stale, admin\)/);

    // KUBECONFIG=a:b — the first file's current context, the second file's user.
    const first = path.join(dir, "first.kubeconfig");
    writeFileSync(
      first,
      stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{ name: "lab", cluster: { server: cp.server, "certificate-authority": cp.caFile } }],
        contexts: [{ name: "lab-admin", context: { cluster: "lab", user: "admin" } }],
        "current-context": "lab-admin",
      }),
    );
    const second = path.join(dir, "second.kubeconfig");
    writeFileSync(second, stringify({ apiVersion: "v1", kind: "Config", users: [good] }));
    const merged = await pnc(["status", "-n", "ctx-shop"], { KUBECONFIG: `${first}:${second}` });
    assert.equal(merged.status, 0, merged.stderr);
    assert.match(merged.stdout, /^ctx-shop\s+one\s+none/m);
  });

  test("a cluster's proxy-url: every request goes through the proxy (HTTP CONNECT)", async () => {
    const cp = controlPlane();
    await meshPod("proxy-shop", "edge");
    const tunnels: string[] = [];
    const proxy = http.createServer((_req, res) => res.writeHead(405).end());
    proxy.on("connect", (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
      tunnels.push(req.url ?? "");
      const [host, port] = (req.url ?? "").split(":");
      const upstream = net.connect(Number(port), host, () => {
        client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
        upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    try {
      const file = kubeconfig("proxy", [{ name: "admin", user: { token: cp.adminToken } }], {
        "proxy-url": `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`,
      });
      const status = await pnc(["status", "-n", "proxy-shop", "--kubeconfig", file]);
      assert.equal(status.status, 0, status.stderr);
      assert.match(status.stdout, /^proxy-shop\s+edge\s+none/m);
      assert.ok(tunnels.length > 0 && tunnels.every((t) => t === new URL(cp.server).host), `tunnels: ${tunnels.join(", ")}`);
    } finally {
      proxy.closeAllConnections();
      proxy.close();
    }
  });

  test("no kubeconfig anywhere, or one that cannot be read: a usage error naming what is missing, nothing asked of any server", async () => {
    const none = await pnc(["status"]);
    assert.equal(none.status, 64);
    assert.equal(none.stderr, "pnc status: no kubeconfig: give --kubeconfig, set KUBECONFIG, or write ~/.kube/config\n");
    const garbage = path.join(dir, "garbage.kubeconfig");
    writeFileSync(garbage, "clusters: {{{");
    const unreadable = await pnc(["keys", "ensure", "--kubeconfig", garbage]);
    assert.equal(unreadable.status, 64);
    assert.match(unreadable.stderr, /^pnc keys ensure: kubeconfig .*garbage\.kubeconfig: .*; nothing replaced\n$/);
  });
});
