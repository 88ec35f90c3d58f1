// The project's own components as real processes (their real entry points) on loopback,
// wired to the local control plane with their own ServiceAccounts: for integration tests,
// end-to-end tests and the demo.
import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { freePort, httpStatus, type ControlPlane } from "../controlplane/harness.ts";

const root = path.resolve(import.meta.dirname, "../..");

export interface Component {
  readonly port: number;
  readonly url: string;
  /** Everything the process logged so far. */
  log(): string;
  /** Wait until a log line matches. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
  readonly process: ChildProcess;
}

async function startProcess(entry: string, env: NodeJS.ProcessEnv, port: number, readyPath: string): Promise<Component> {
  let output = "";
  const child = spawn(process.execPath, ["--import", "tsx", path.join(root, entry)], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr.on("data", (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      resolve();
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  while ((await httpStatus(`${url}${readyPath}`).catch(() => 0)) !== 200) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${entry} did not become ready:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    url,
    process: child,
    log: () => output,
    waitForLog: async (pattern, timeoutMs = 5000) => {
      const until = Date.now() + timeoutMs;
      while (!pattern.test(output)) {
        if (Date.now() > until) throw new Error(`no log line matching ${String(pattern)} from ${entry}:\n${output.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await exited;
      }
    },
  };
}

/** A key pair for signing: the function's private-key directory and the node-runners' public one. */
export function signingKeyDirs(base: string, keyid = "fn-20261125000000"): { privateDir: string; publicDir: string; signingKey: { keyid: string; privateKey: import("node:crypto").KeyObject } } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const privateDir = path.join(base, "signing");
  const publicDir = path.join(base, "public");
  mkdirSync(privateDir, { recursive: true });
  mkdirSync(publicDir, { recursive: true });
  writeFileSync(path.join(privateDir, `${keyid}.pem`), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
  writeFileSync(path.join(publicDir, `${keyid}.pem`), publicKey.export({ type: "spki", format: "pem" }));
  return { privateDir, publicDir, signingKey: { keyid, privateKey } };
}

export async function startNodeRunner(
  cp: ControlPlane,
  options: { nodeName: string; publicKeysDir: string; stateDir: string; cgroupRoot: string; port?: number; env?: NodeJS.ProcessEnv },
): Promise<Component> {
  await cp.applyManifest(path.join(root, "config/node-runner/rbac.yaml"));
  // Bound to its node, as a DaemonSet pod's token is: the admission policy checks the node name in it.
  const token = await cp.serviceAccountToken("podnet-system", "podnet-node-runner", options.nodeName);
  const port = options.port ?? (await freePort());
  return startProcess(
    "node-runner/main.ts",
    {
      NODE_NAME: options.nodeName,
      LISTEN_ADDRESS: `127.0.0.1:${port}`,
      PUBLIC_KEYS_DIR: options.publicKeysDir,
      KUBECONFIG: cp.writeKubeconfig("node-runner", token),
      STATE_DIR: options.stateDir,
      CGROUP_ROOT: options.cgroupRoot,
      ...options.env,
    },
    port,
    "/readyz",
  );
}

/** The function's audience, as Knative Serving names a Service's (status.address.audience). */
export const FUNCTION_AUDIENCE = "serving.knative.dev/service/podnet-system/podnet-decision";

/** A token of a source's OIDC identity for the function's audience, as Knative's sources send. */
export function senderToken(cp: ControlPlane, kind: "ApiServerSource" | "PingSource", audience = FUNCTION_AUDIENCE): Promise<string> {
  const name = kind === "PingSource" ? "podnet-resync" : "podnet-pods";
  return cp.serviceAccountToken("podnet-system", `${name}-oidc-sources.knative.dev-${kind.toLowerCase()}`, undefined, audience);
}

export async function startFunction(
  cp: ControlPlane,
  options: { signingKeysDir: string; policyFile?: string; nodeRunnerPort: number; port?: number; env?: NodeJS.ProcessEnv },
): Promise<Component> {
  await cp.applyManifest(path.join(root, "config/function/rbac.yaml"));
  const token = await cp.serviceAccountToken("podnet-system", "podnet-decision");
  const port = options.port ?? (await freePort());
  return startProcess(
    "functions/main.ts",
    {
      PORT: String(port),
      ...(options.policyFile === undefined ? {} : { POLICY_FILE: options.policyFile }),
      SIGNING_KEYS_DIR: options.signingKeysDir,
      NODE_RUNNER_PORT: String(options.nodeRunnerPort),
      // Every "node" is this machine: send to loopback whatever the pod's hostIP says.
      NODE_RUNNER_ADDRESS: "127.0.0.1",
      CONTROLLER_NAMESPACE: "podnet-system",
      KUBECONFIG: cp.writeKubeconfig("decision", token),
      DISPATCH_ATTEMPTS: "2",
      // As in the manifests: only the sources' OIDC identities may send, for this audience.
      SENDER_AUTH: "oidc",
      SINK_AUDIENCE: FUNCTION_AUDIENCE,
      RESYNC_MIN_INTERVAL_MS: "1",
      ...options.env,
    },
    port,
    "/readyz",
  );
}

export function scratchDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), `pnct-${prefix}-`));
  return {
    dir,
    remove: () => {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** POST a payload signed as the decision function signs it; returns status and parsed body. */
export async function sendSigned(
  url: string,
  requestPath: string,
  payload: unknown,
  key: { keyid: string; privateKey: import("node:crypto").KeyObject },
): Promise<{ status: number; body: Record<string, unknown> }> {
  const { signRequest } = await import("../../contract/signature.ts");
  const { randomUUID } = await import("node:crypto");
  const target = new URL(requestPath, url);
  const body = Buffer.from(JSON.stringify(payload));
  const headers = signRequest(
    { method: "POST", authority: target.host, path: target.pathname, contentType: "application/json", body },
    key,
    { now: Date.now(), nonce: randomUUID() },
  );
  return new Promise((resolve, reject) => {
    const req = http.request(target, { method: "POST", headers: { ...headers, "content-type": "application/json" } }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => {
        let parsed: Record<string, unknown>;
        try {
          parsed = JSON.parse(text) as Record<string, unknown>;
        } catch {
          parsed = { raw: text };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}
