// The project's own components as real processes (their real entry points) on loopback,
// wired to the local control plane with their own ServiceAccounts: for integration tests,
// end-to-end tests and the demo.
import { goProgram } from "./go-programs.ts";
import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync, randomUUID, type KeyObject } from "node:crypto";
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { generateTls } from "../../cli/tls.ts";
import { LEGACY_MARK, MARK, STATUS_INITIALIZED } from "../../contract/mark.ts";
import { API_VERSION, NODE_RUNNER_SERVER_NAME } from "../../contract/apply-request.ts";
import { DEFAULT_CAPTURE_CONFIG } from "../../contract/capture-config.ts";
import { signRequest } from "../../contract/signature.ts";
import { freePort, httpStatus, type ControlPlane } from "../controlplane/harness.ts";
import { scrapeMetrics } from "./metrics.ts";
import { relayInto } from "../controlplane/relays.ts";
import { formatHostPort } from "../../lib/listen-address.ts";

const root = path.resolve(import.meta.dirname, "../..");

export interface Component {
  /** The loopback address it listens on: 127.0.0.1, or ::1 for a node-runner on an "IPv6 node". */
  readonly host: string;
  readonly port: number;
  /** Its address from this process (through a relay when it runs in a cluster's network). */
  readonly url: string;
  /** Its address from its own network namespace (`url` unless it runs in a cluster's network). */
  readonly inClusterUrl: string;
  /** Everything the process logged so far. */
  log(): string;
  /** Wait until a log line matches. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
  readonly process: ChildProcess;
  /** Its metrics port's address (`https://…` for the node-runner). */
  readonly metricsUrl: string;
  /** Its metrics page, scraped as Prometheus would (on the metrics port, with a token where it needs one). */
  metrics(): Promise<string>;
}

/**
 * The node-runners' TLS, as `pnc keys generate` makes it (openssl), once per test process: files
 * for the node-runner, the CA for its clients, the name the certificate carries.
 */
let tls: { certFile: string; keyFile: string; caFile: string; ca: Buffer } | undefined;
export function nodeRunnerTls(): { certFile: string; keyFile: string; caFile: string; ca: Buffer; servername: string } {
  if (tls === undefined) {
    const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-tls-"));
    process.once("exit", () => {
      rmSync(dir, { recursive: true, force: true });
    });
    const files = generateTls();
    const [certFile, keyFile, caFile] = ["tls.crt", "tls.key", "ca.crt"].map((f) => path.join(dir, f)) as [string, string, string];
    writeFileSync(certFile, files.cert);
    writeFileSync(keyFile, files.key, { mode: 0o600 });
    writeFileSync(caFile, files.ca);
    tls = { certFile, keyFile, caFile, ca: Buffer.from(files.ca) };
  }
  return { ...tls, servername: NODE_RUNNER_SERVER_NAME };
}

/** Options for https requests to a node-runner on loopback (its certificate names the service). */
export function nodeRunnerTlsOptions(): { ca: Buffer; servername: string } {
  const t = nodeRunnerTls();
  return { ca: t.ca, servername: t.servername };
}

async function startProcess(
  entry: string,
  env: NodeJS.ProcessEnv,
  port: number,
  readyPath: string,
  host: string,
  tlsClient: { ca: Buffer; servername: string } | undefined,
  nodeArgs: readonly string[],
  metrics: { readonly port: number; readonly scrape: (url: string) => Promise<string> },
  /** Run it in this network namespace (a cluster's fabric), reached from here through relays. */
  netns?: string,
  /** Also append everything it logs to this file (for a person to read). */
  logFile?: string,
): Promise<Component> {
  let output = "";
  // TypeScript through tsx; compiled JavaScript (dist/, `npm run build`) with the flags given.
  const args = entry.endsWith(".js") ? [...nodeArgs, path.join(root, entry)] : ["--import", "tsx", path.join(root, entry)];
  const [command, argv] = netns === undefined ? [process.execPath, args] : ["nsenter", [`--net=/run/netns/${netns}`, "--", process.execPath, ...args]];
  const child = spawn(command, argv, {
    cwd: root,
    // An env value of undefined removes the variable.
    env: Object.fromEntries(Object.entries({ ...process.env, ...env }).filter(([, v]) => v !== undefined)),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const file = logFile === undefined ? undefined : createWriteStream(logFile, { flags: "a" });
  for (const stream of [child.stdout, child.stderr]) {
    stream.on("data", (c: Buffer) => (output += c.toString()));
    if (file !== undefined) stream.pipe(file, { end: false });
  }
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      file?.end();
      resolve();
    });
  });
  const scheme = tlsClient === undefined ? "http" : "https";
  const relays = netns === undefined ? [] : [await relayInto(netns, { host, port }), await relayInto(netns, { host, port: metrics.port })];
  const [mainRelay, metricsRelay] = relays;
  const url = `${scheme}://${formatHostPort(host, mainRelay?.port ?? port)}`;
  const metricsUrl = `${scheme}://${formatHostPort(host, metricsRelay?.port ?? metrics.port)}`;
  const stopRelays = async (): Promise<void> => {
    for (const r of relays) await r.stop();
  };
  const deadline = Date.now() + 30_000;
  while ((await httpStatus(`${url}${readyPath}`, tlsClient ?? {}).catch(() => 0)) !== 200) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      await stopRelays();
      throw new Error(`${entry} did not become ready:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host,
    port,
    url,
    inClusterUrl: `${scheme}://${formatHostPort(host, port)}`,
    process: child,
    metricsUrl,
    metrics: () => metrics.scrape(metricsUrl),
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
      await stopRelays();
    },
  };
}

/** A key pair for signing: the function's private-key directory and the node-runners' public one. */
export function signingKeyDirs(
  base: string,
  keyid = "fn-20261125000000",
): { privateDir: string; publicDir: string; signingKey: { keyid: string; privateKey: KeyObject } } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const privateDir = path.join(base, "signing");
  const publicDir = path.join(base, "public");
  mkdirSync(privateDir, { recursive: true });
  mkdirSync(publicDir, { recursive: true });
  writeFileSync(path.join(privateDir, `${keyid}.pem`), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
  writeFileSync(path.join(publicDir, `${keyid}.pem`), publicKey.export({ type: "spki", format: "pem" }));
  return { privateDir, publicDir, signingKey: { keyid, privateKey } };
}

const manifest = (file: string): string => readFileSync(path.join(root, file), "utf8");

/** The glibc allocator settings (MALLOC_* variables) of the function's container in its Service. */
export function manifestFunctionMallocEnv(): Record<string, string> {
  return Object.fromEntries(
    [...manifest("eventing/base/service.yaml").matchAll(/name: (MALLOC_[A-Z_]+)\s+value: "([^"]*)"/g)].map((m) => [m[1] ?? "", m[2] ?? ""]),
  );
}

/**
 * The V8 flags each image runs with, from the manifests themselves (the DaemonSet's command,
 * the Service's NODE_OPTIONS): benchmarks of compiled components use exactly these.
 */
export function manifestV8Flags(): { nodeRunner: string[]; function: string[] } {
  const daemonSet = manifest("config/node-runner/daemonset.yaml");
  const service = manifest("eventing/base/service.yaml");
  const command = /command: \[([^\]]*dist\/node-runner\/main\.js[^\]]*)\]/.exec(daemonSet)?.[1] ?? "";
  const nodeOptions = /name: NODE_OPTIONS\s+value: "([^"]*)"/.exec(service)?.[1] ?? "";
  return {
    nodeRunner: [...command.matchAll(/"(--[^"]+)"/g)].map((m) => m[1] ?? ""),
    function: nodeOptions.split(/\s+/).filter((f) => f.startsWith("--")),
  };
}

/**
 * The admission policies of config/admission/, as every install has them (the node-runner's
 * identity check relies on them: its patch is refused for another node's pod). Returns once the
 * API server enforces them: a dry-run creation of a marked pod is refused (seconds after they are
 * stored; more on a busy machine).
 */
export async function installAdmissionPolicies(cp: ControlPlane): Promise<void> {
  for (const file of ["podnet-annotations.yaml", "podnet-node-runner-events.yaml"]) await cp.applyManifest(path.join(root, "config/admission", file));
  const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  const marked = {
    metadata: { generateName: "probe-", annotations: { [MARK.status]: STATUS_INITIALIZED } },
    spec: { containers: [{ name: "app", image: "example/app" }] },
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await core.createNamespacedPod({ namespace: "default", body: marked, dryRun: "All" });
    } catch (err) {
      if (err instanceof k8s.ApiException && err.code === 403) return;
      throw err;
    }
    if (Date.now() > deadline) throw new Error("the admission policies never took effect");
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function startNodeRunner(
  cp: ControlPlane,
  options: {
    nodeName: string;
    publicKeysDir: string;
    stateDir: string;
    cgroupRoot: string;
    port?: number;
    env?: NodeJS.ProcessEnv;
    /** Run the compiled node-runner (dist/, `npm run build`) with these V8 flags, as its image does. */
    compiled?: { nodeArgs: readonly string[] };
    /** "::1": an IPv6 node, configured as the DaemonSet configures one (HOST_IP and LISTEN_PORT). */
    host?: "127.0.0.1" | "::1";
  },
): Promise<Component> {
  await cp.applyManifest(path.join(root, "config/node-runner/rbac.yaml"));
  await installAdmissionPolicies(cp);
  // Bound to its node, as a DaemonSet pod's token is: the admission policy checks the node name in it.
  const token = await cp.serviceAccountToken("podnet-system", "podnet-node-runner", options.nodeName);
  const port = options.port ?? (await freePort());
  const metricsPort = await freePort();
  return startProcess(
    options.compiled === undefined ? "node-runner/main.ts" : "dist/node-runner/main.js",
    {
      NODE_NAME: options.nodeName,
      ...(options.host === "::1"
        ? { HOST_IP: "::1", LISTEN_PORT: String(port), METRICS_PORT: String(metricsPort) }
        : { LISTEN_ADDRESS: `127.0.0.1:${port}`, METRICS_LISTEN: `127.0.0.1:${metricsPort}` }),
      PUBLIC_KEYS_DIR: options.publicKeysDir,
      KUBECONFIG: cp.writeKubeconfig("node-runner", token),
      STATE_DIR: options.stateDir,
      CGROUP_ROOT: options.cgroupRoot,
      TLS_CERT: nodeRunnerTls().certFile,
      TLS_KEY: nodeRunnerTls().keyFile,
      NETNS_EXEC: goProgram("podnet-netns-exec"),
      ...options.env,
    },
    port,
    "/readyz",
    options.host ?? "127.0.0.1",
    nodeRunnerTlsOptions(),
    options.compiled?.nodeArgs ?? [],
    // The cluster admin's token: allowed to get /metrics, as Prometheus' ClusterRole is.
    { port: metricsPort, scrape: (url) => scrapeMetrics(url, { ...nodeRunnerTlsOptions(), token: cp.adminToken }) },
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
  options: {
    signingKeysDir: string;
    policyFile?: string;
    nodeRunnerPort: number;
    port?: number;
    env?: NodeJS.ProcessEnv;
    /** The CA of the node-runners' certificate (default: the tests' own). */
    nodeRunnerCaFile?: string;
    /** Where every request goes (default loopback: every "node" is this machine); null: the pod's hostIP, as in a cluster. */
    nodeRunnerAddress?: string | null;
    /** Run the compiled function (dist/, `npm run build`) with these V8 flags, as its image does. */
    compiled?: { nodeArgs: readonly string[] };
    /** Run it in a cluster's fabric namespace, where the nodes' addresses are routed (cluster.ts). */
    netns?: string;
    /** Also write its log to this file. */
    logFile?: string;
  },
): Promise<Component> {
  await cp.applyManifest(path.join(root, "config/function/rbac.yaml"));
  const token = await cp.serviceAccountToken("podnet-system", "podnet-decision");
  const port = options.port ?? (await freePort());
  const metricsPort = await freePort();
  return startProcess(
    options.compiled === undefined ? "functions/main.ts" : "dist/functions/main.js",
    {
      PORT: String(port),
      METRICS_PORT: String(metricsPort),
      ...(options.policyFile === undefined ? {} : { POLICY_FILE: options.policyFile }),
      SIGNING_KEYS_DIR: options.signingKeysDir,
      NODE_RUNNER_PORT: String(options.nodeRunnerPort),
      NODE_RUNNER_SCHEME: "https",
      NODE_RUNNER_CA_FILE: options.nodeRunnerCaFile ?? nodeRunnerTls().caFile,
      // Every simulated "node" is this machine: send to loopback whatever the pod's hostIP says.
      NODE_RUNNER_ADDRESS: options.nodeRunnerAddress === null ? undefined : (options.nodeRunnerAddress ?? "127.0.0.1"),
      CONTROLLER_NAMESPACE: "podnet-system",
      KUBECONFIG: cp.writeKubeconfig("decision", token, options.netns === undefined ? "host" : "cluster"),
      // As in the manifests: only the sources' OIDC identities may send, for this audience.
      SENDER_AUTH: "oidc",
      SINK_AUDIENCE: FUNCTION_AUDIENCE,
      RESYNC_MIN_INTERVAL_MS: "1",
      // Compiled, it runs as its image does: the Service's allocator settings too.
      ...(options.compiled === undefined ? {} : manifestFunctionMallocEnv()),
      ...options.env,
    },
    port,
    "/readyz",
    "127.0.0.1",
    undefined,
    options.compiled?.nodeArgs ?? [],
    { port: metricsPort, scrape: (url) => scrapeMetrics(url) },
    options.netns,
    options.logFile,
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
/** What a node-runner answered. */
export interface RunnerReply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Record<string, unknown>;
}

/** POST to a node-runner on loopback over its TLS, headers as given (the Host header included). */
export function postToRunner(
  port: number,
  requestPath: string,
  body: Buffer,
  headers: Record<string, string>,
  host = "127.0.0.1",
  agent?: https.Agent,
): Promise<RunnerReply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host,
        port,
        path: requestPath,
        method: "POST",
        ...nodeRunnerTlsOptions(),
        headers: { "content-type": "application/json", ...headers },
        ...(agent === undefined ? {} : { agent }),
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => {
          let parsed: Record<string, unknown>;
          try {
            parsed = JSON.parse(text) as Record<string, unknown>;
          } catch {
            parsed = { raw: text };
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** A signed request to a node-runner, as the function sends it (authority: the runner's address). */
/** An ApplyRequest as the function sends one (the capture as given: invalid ones too, for refusals). */
export function applyRequestFor(
  node: string,
  pod: { namespace: string; name: string; uid: string; ips: readonly string[] },
  capture: unknown = DEFAULT_CAPTURE_CONFIG,
) {
  return { apiVersion: API_VERSION, kind: "ApplyRequest", node, pod, capture, decision: { reason: "test", policy: "test" } } as const;
}

/** One request to a node-runner signed as the function signs it: its body and headers (the Host header included). */
export function signedFor(
  runner: { host: string; port: number },
  requestPath: string,
  payload: unknown,
  key: { keyid: string; privateKey: KeyObject },
): { body: Buffer; headers: Record<string, string> } {
  const body = Buffer.from(JSON.stringify(payload));
  const authority = formatHostPort(runner.host, runner.port);
  const headers = signRequest({ method: "POST", authority, path: requestPath, contentType: "application/json", body }, key, {
    now: Date.now(),
    nonce: randomUUID(),
  });
  return { body, headers: { ...headers, host: authority } };
}

/** Sign and send one request to a node-runner, as the function does. */
export async function sendSigned(
  runner: { host: string; port: number },
  requestPath: string,
  payload: unknown,
  key: { keyid: string; privateKey: KeyObject },
): Promise<RunnerReply> {
  const { body, headers } = signedFor(runner, requestPath, payload, key);
  return postToRunner(runner.port, requestPath, body, headers, runner.host);
}

/** Clear a pod's mark as a node-runner may (the client holds a runner's node-bound token): tests put a pod back between cases. */
export async function clearMarkAs(runner: k8s.CoreV1Api, pod: { readonly namespace: string; readonly name: string }): Promise<void> {
  const cleared = Object.fromEntries([...Object.values(MARK), ...Object.values(LEGACY_MARK)].map((key) => [key, null]));
  await runner.patchNamespacedPod(
    { namespace: pod.namespace, name: pod.name, body: { metadata: { annotations: cleared } } },
    k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
  );
}
