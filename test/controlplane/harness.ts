// A real, local control plane for tests and the demo: etcd, kube-apiserver (RBAC on,
// service-account token signing, an admin token) and, on request, Knative's ApiServerSource
// receive adapter, all on loopback. Binaries come from test/controlplane/build.sh.
//
// Every start gets a fresh directory named pnc-cp-<pid>-<random> under the system temp dir;
// stop() kills every process it started (by process group) and removes the directory. A run
// that was killed is cleaned up by the next start (see reapStaleRuns).
import { execFileSync, spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { stringify as stringifyYaml } from "yaml";
import { freePort, relayInto, RELAY_SCRIPT } from "./relays.ts";
import { killGroup, killRecordedGroups, LoggedProcesses, running, type LoggedProcess } from "./logged-processes.ts";

export { freePort };
import { formatHostPort } from "../../lib/listen-address.ts";

export const CACHE_DIR = process.env.PNC_CACHE_DIR ?? path.join(os.homedir(), ".cache", "pnc-controlplane");
export const BIN = {
  etcd: path.join(CACHE_DIR, "bin", "etcd"),
  kubeApiserver: path.join(CACHE_DIR, "bin", "kube-apiserver"),
  // Knative's own build of the ApiServerSource adapter, the binary its image holds.
  adapter: path.join(CACHE_DIR, "bin", "knative", "eventing", "apiserver_receive_adapter"),
  kustomize: path.join(CACHE_DIR, "bin", "kustomize"),
  kubectl: path.join(CACHE_DIR, "bin", "kubectl"),
  helm: path.join(CACHE_DIR, "bin", "helm"),
  promtool: path.join(CACHE_DIR, "bin", "promtool"),
  kwok: path.join(CACHE_DIR, "bin", "kwok"),
};
/** Knative's adapter serves health probes on this fixed port: nothing else may use it. */
export const ADAPTER_HEALTH_PORT = 8080;

const RUN_PREFIX = "pnc-cp-";
const SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local";

/** undefined when the binaries are built; otherwise why the control plane cannot start. */
export function missingBinariesReason(): string | undefined {
  const missing = Object.values(BIN).filter((p) => !existsSync(p));
  if (missing.length === 0) return undefined;
  return `control-plane binaries not built (${missing.map((p) => path.basename(p)).join(", ")}): run test/controlplane/build.sh`;
}

/** Is a process (still) running? */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Remove what earlier runs left behind when they were killed before stop(). */
export function reapStaleRuns(): number {
  let reaped = 0;
  for (const entry of readdirSync(os.tmpdir())) {
    const match = /^pnc-cp-(\d+)-/.exec(entry);
    if (match === null || pidAlive(Number(match[1]))) continue;
    const dir = path.join(os.tmpdir(), entry);
    killRecordedGroups(dir);
    rmSync(dir, { recursive: true, force: true });
    reaped++;
  }
  return reaped;
}

/**
 * Poll `probe` (a rejection counts as false) until it holds. Fails at once when `failed` gives a
 * reason (a process exited), and after `timeoutMs` with what `detail` then says.
 */
export async function waitFor(
  what: string,
  timeoutMs: number,
  probe: () => Promise<boolean> | boolean,
  failed?: () => string | undefined,
  detail?: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reason = failed?.();
    if (reason !== undefined) throw new Error(`${what}: ${reason}`);
    if (await Promise.resolve(probe()).catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms${detail === undefined ? "" : `: ${detail()}`}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The status of a GET (https with `ca`, a bearer `token` if given); rejects when nothing answers. */
export function httpStatus(url: string, options: { ca?: Buffer; token?: string; servername?: string } = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const request = (u.protocol === "https:" ? https : http).get(
      url,
      {
        ...(options.ca === undefined ? {} : { ca: options.ca }),
        ...(options.servername === undefined ? {} : { servername: options.servername }),
        headers: options.token === undefined ? {} : { authorization: `Bearer ${options.token}` },
        timeout: 2000,
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    request.on("timeout", () => request.destroy(new Error("timeout")));
    request.on("error", reject);
  });
}

export interface AdapterOptions {
  /** Where events go (the function's URL). */
  readonly sink: string;
  /** Namespace the adapter "runs in" (its ServiceAccount and ConfigMaps live there). */
  readonly namespace?: string;
  /** Server-side label selector for pods. */
  readonly labelSelector?: string;
  /**
   * Watch only these namespaces, one watch each, as the adapter does when its source's
   * namespaceSelector is not empty (Knative's reconciler lists the namespaces it matches): each
   * watch delivers on its own, so events of different namespaces are sent in parallel. Default:
   * every namespace, on one watch whose events are sent one at a time.
   */
  readonly namespaces?: readonly string[];
  readonly mode?: "Resource" | "Reference";
  /**
   * Send Knative's OIDC sender identity for this sink audience, as the ApiServerSource
   * reconciler configures it (K_AUDIENCE, K_OIDC_SERVICE_ACCOUNT): the adapter requests a token
   * of `<source>-oidc-sources.knative.dev-apiserversource` and sends it as a Bearer token.
   */
  readonly audience?: string;
}

export interface Adapter {
  readonly logFile: string;
  stop(): Promise<void>;
}

export interface ControlPlane {
  readonly dir: string;
  readonly server: string;
  readonly caFile: string;
  readonly ca: Buffer;
  readonly adminToken: string;
  /** The API server's URL for processes inside the cluster network (`server` without one). */
  readonly clusterServer: string;
  /** A client configuration for a bearer token (admin when omitted), for this process or (`cluster`) one in the cluster network. */
  kubeConfig(token?: string, where?: "host" | "cluster"): k8s.KubeConfig;
  /** A kubeconfig file for a bearer token, for processes (the adapter, the node-runner). */
  writeKubeconfig(name: string, token: string, where?: "host" | "cluster"): string;
  /** A client certificate the API server authenticates as `user` in `groups` (its --client-ca-file signed it), as PEM files. */
  clientCertificate(user: string, groups: readonly string[]): { cert: string; key: string };
  /** Create (if missing) a namespace and its default ServiceAccount (no controller-manager runs here). */
  ensureNamespace(name: string): Promise<void>;
  /**
   * A real, API-signed token for a ServiceAccount (created if missing). Bound to a Node object
   * when `boundNode` is given, as a DaemonSet pod's token names its node.
   */
  serviceAccountToken(namespace: string, name: string, boundNode?: string, audience?: string): Promise<string>;
  startAdapter(options: AdapterOptions): Promise<Adapter>;
  /** Create every object in a YAML manifest file (as admin); existing objects are left as they are. */
  applyManifest(file: string): Promise<void>;
  /** The same for YAML text; returns the objects created, as kind/name. */
  applyYaml(text: string): Promise<string[]>;
  /**
   * Apply YAML with kubectl, server-side, as a user applies a release file: CustomResourceDefinitions
   * first, established before the rest. (The JavaScript client's typed models drop fields they do
   * not name, such as a CRD schema's x-kubernetes-preserve-unknown-fields: CRDs go this way.)
   */
  kubectlApply(yaml: string): void;
  /** Install the CRDs build.sh fetched (Knative's ApiServerSource, PingSource, Broker, Trigger, Service, ...; prometheus-operator's PodMonitor and PrometheusRule) and wait until they serve; `monitoring`: prometheus-operator's only. */
  installCrds(only?: "monitoring"): Promise<string[]>;
  /** Processes still running (for leak checks). */
  pids(): number[];
  /** The kube-apiserver's process (tests freeze it with SIGSTOP to play a hung API server). */
  readonly apiserverPid: number;
  stop(): Promise<void>;
}

/**
 * Where a cluster's control plane runs (test/controlplane/network.ts): etcd and the API server in
 * the fabric's network namespace, the API server on `address` (the `kubernetes` Service's
 * endpoint), reached from the host through a pair of relays on 127.0.0.1.
 */
export interface ControlPlaneNetwork {
  readonly netns: string;
  /** The fabric's addresses, the primary first (the API server's, the `kubernetes` Service's endpoint). */
  readonly addresses: readonly string[];
  readonly serviceCidrs: readonly string[];
  /** The `kubernetes` Service's addresses (the first of each Service range). */
  readonly serviceIps: readonly string[];
}

/** The API server's port inside a cluster network (the usual one: each namespace has its own ports). */
export const CLUSTER_API_PORT = 6443;

/**
 * A self-signed serving certificate (its own CA) for the API server inside a cluster network:
 * valid for the relay's 127.0.0.1, the fabric's addresses and the `kubernetes` Service's.
 */
function openssl(args: readonly string[]): void {
  const r = spawnSync("openssl", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args[0] ?? ""}: ${r.stderr}`);
}

/** The CA the API server trusts for client certificates (as kubeadm's clusters have one). */
function clientCertificateAuthority(dir: string): { cert: string; key: string } {
  const ca = { cert: path.join(dir, "client-ca.crt"), key: path.join(dir, "client-ca.key") };
  const args = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=client-ca"];
  openssl([...args, "-keyout", ca.key, "-out", ca.cert, "-addext", "basicConstraints=critical,CA:TRUE"]);
  return ca;
}

function apiServingCertificate(dir: string, addresses: readonly string[]): { cert: string; key: string } {
  const cert = path.join(dir, "apiserver.crt");
  const key = path.join(dir, "apiserver.key");
  const names = [
    "IP:127.0.0.1",
    ...addresses.map((a) => `IP:${a}`),
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
  ];
  const args = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=kube-apiserver"];
  openssl([...args, "-keyout", key, "-out", cert, "-addext", `subjectAltName=${names.join(",")}`, "-addext", "basicConstraints=critical,CA:TRUE"]);
  return { cert, key };
}

export async function startControlPlane(options: { log?: (line: string) => void; network?: ControlPlaneNetwork } = {}): Promise<ControlPlane> {
  const missing = missingBinariesReason();
  if (missing !== undefined) throw new Error(missing);
  const log = options.log ?? ((): void => undefined);
  reapStaleRuns();

  const dir = mkdtempSync(path.join(os.tmpdir(), `${RUN_PREFIX}${process.pid}-`));
  const processes = new LoggedProcesses(dir);
  const network = options.network;
  /** `inNetwork`: the process runs in the cluster's fabric namespace (when there is one). */
  const start = (name: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}, inNetwork = true): LoggedProcess =>
    processes.start(name, command, args, { env, ...(network !== undefined && inNetwork ? { netns: network.netns } : {}) });
  const exitedEarly = (m: LoggedProcess) => (): string | undefined =>
    running(m) ? undefined : `exited (${m.child.exitCode ?? m.child.signalCode ?? "?"}); log:\n${tail(path.join(dir, `${m.name}.log`))}`;
  const stopAll = (): Promise<void> => processes.stop();

  try {
    // etcd
    const [etcdClient, etcdPeer] = [await freePort(), await freePort()];
    const etcd = start("etcd", BIN.etcd, [
      "--data-dir",
      path.join(dir, "etcd"),
      "--listen-client-urls",
      `http://127.0.0.1:${etcdClient}`,
      "--advertise-client-urls",
      `http://127.0.0.1:${etcdClient}`,
      "--listen-peer-urls",
      `http://127.0.0.1:${etcdPeer}`,
      "--initial-advertise-peer-urls",
      `http://127.0.0.1:${etcdPeer}`,
      "--initial-cluster",
      `default=http://127.0.0.1:${etcdPeer}`,
      "--listen-metrics-urls",
      `http://127.0.0.1:${await freePort()}`,
      "--log-level",
      "warn",
      "--unsafe-no-fsync",
    ]);
    log(`etcd starting on 127.0.0.1:${etcdClient}`);
    // In a cluster network, etcd's loopback is the fabric's: the API server's readiness waits for it.
    if (network === undefined)
      await waitFor("etcd", 30_000, async () => (await httpStatus(`http://127.0.0.1:${etcdClient}/health`)) === 200, exitedEarly(etcd));

    // kube-apiserver
    const adminToken = randomBytes(24).toString("hex");
    writeFileSync(path.join(dir, "tokens.csv"), `${adminToken},admin,admin,"system:masters"\n`, { mode: 0o600 });
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    writeFileSync(path.join(dir, "sa.key"), privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    writeFileSync(path.join(dir, "sa.pub"), publicKey.export({ type: "spki", format: "pem" }));
    const apiPort = await freePort();
    const certDir = path.join(dir, "pki");
    mkdirSync(certDir, { recursive: true });
    const clientCa = clientCertificateAuthority(certDir);
    const served =
      network === undefined
        ? // No Service endpoints for the API server itself: loopback is not allowed there, and nothing here needs them.
          [
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--endpoint-reconciler-type",
            "none",
            "--secure-port",
            String(apiPort),
            "--cert-dir",
            certDir,
          ]
        : (() => {
            const tls = apiServingCertificate(certDir, [...network.addresses, ...network.serviceIps]);
            const address = network.addresses[0] ?? "";
            return [
              "--bind-address",
              address,
              "--advertise-address",
              address,
              "--secure-port",
              String(CLUSTER_API_PORT),
              "--tls-cert-file",
              tls.cert,
              "--tls-private-key-file",
              tls.key,
              // kubectl logs/exec: the kubelets by their node IPs (their names resolve nowhere).
              "--kubelet-preferred-address-types",
              "InternalIP",
              // Webhooks (istiod's injector) at their Service's endpoints: the fabric routes the
              // pod subnets but runs no kube-proxy for ClusterIPs.
              "--enable-aggregator-routing=true",
            ];
          })();
    const apiserver = start("kube-apiserver", BIN.kubeApiserver, [
      "--etcd-servers",
      `http://127.0.0.1:${etcdClient}`,
      ...served,
      "--authorization-mode",
      "RBAC",
      "--token-auth-file",
      path.join(dir, "tokens.csv"),
      "--client-ca-file",
      clientCa.cert,
      "--service-account-issuer",
      SERVICE_ACCOUNT_ISSUER,
      "--api-audiences",
      SERVICE_ACCOUNT_ISSUER,
      "--service-account-key-file",
      path.join(dir, "sa.pub"),
      "--service-account-signing-key-file",
      path.join(dir, "sa.key"),
      "--service-cluster-ip-range",
      network === undefined ? "10.96.0.0/16" : network.serviceCidrs.join(","),
      "--allow-privileged",
      "--profiling=false",
      "--v",
      "1",
    ]);
    if (network !== undefined) {
      // The host's way in: 127.0.0.1:apiPort → a unix socket → the fabric's API server.
      const socket = path.join(dir, "apiserver.sock");
      start("relay-fabric", process.execPath, [RELAY_SCRIPT, `unix:${socket}`, `tcp:${formatHostPort(network.addresses[0] ?? "", CLUSTER_API_PORT)}`]);
      start("relay-host", process.execPath, [RELAY_SCRIPT, `tcp:127.0.0.1:${apiPort}`, `unix:${socket}`], {}, false);
    }
    const server = `https://127.0.0.1:${apiPort}`;
    const caFile = path.join(certDir, "apiserver.crt");
    /** The API server as processes in the cluster network reach it. */
    const clusterServer = network === undefined ? server : `https://${formatHostPort(network.addresses[0] ?? "", CLUSTER_API_PORT)}`;
    log(`kube-apiserver starting on ${server}`);
    let ca = Buffer.alloc(0);
    await waitFor(
      "kube-apiserver",
      90_000,
      async () => {
        if (!existsSync(caFile)) return false;
        ca = readFileSync(caFile);
        return (await httpStatus(`${server}/readyz`, { ca, token: adminToken })) === 200;
      },
      exitedEarly(apiserver),
    );

    const kubeConfig = (token: string = adminToken, where: "host" | "cluster" = "host"): k8s.KubeConfig => {
      const kc = new k8s.KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: "local", server: where === "host" ? server : clusterServer, caFile }],
        users: [{ name: "user", token }],
        contexts: [{ name: "local", cluster: "local", user: "user" }],
        currentContext: "local",
      });
      return kc;
    };
    const core = kubeConfig().makeApiClient(k8s.CoreV1Api);

    const ensureNamespace = async (name: string): Promise<void> => {
      await createIgnoringConflict(() => core.createNamespace({ body: { metadata: { name } } }));
      await createIgnoringConflict(() => core.createNamespacedServiceAccount({ namespace: name, body: { metadata: { name: "default" } } }));
    };
    const serviceAccountToken = async (namespace: string, name: string, boundNode?: string, audience = SERVICE_ACCOUNT_ISSUER): Promise<string> => {
      await ensureNamespace(namespace);
      await createIgnoringConflict(() => core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } }));
      let boundObjectRef: k8s.V1BoundObjectReference | undefined;
      if (boundNode !== undefined) {
        await createIgnoringConflict(() => core.createNode({ body: { metadata: { name: boundNode } } }));
        const node = await core.readNode({ name: boundNode });
        boundObjectRef = { apiVersion: "v1", kind: "Node", name: boundNode, ...(node.metadata?.uid === undefined ? {} : { uid: node.metadata.uid }) };
      }
      const request = await core.createNamespacedServiceAccountToken({
        name,
        namespace,
        body: { spec: { audiences: [audience], expirationSeconds: 24 * 3600, ...(boundObjectRef === undefined ? {} : { boundObjectRef }) } },
      });
      const token = request.status?.token;
      if (token === undefined) throw new Error(`no token issued for ${namespace}/${name}`);
      return token;
    };
    const writeKubeconfig = (name: string, token: string, where: "host" | "cluster" = "host"): string => {
      const file = path.join(dir, `${name}.kubeconfig`);
      writeFileSync(file, kubeConfig(token, where).exportConfig(), { mode: 0o600 });
      return file;
    };

    const clientCertificate = (user: string, groups: readonly string[]): { cert: string; key: string } => {
      const base = path.join(certDir, `client-${user.replace(/[^a-z0-9-]/gi, "_")}`);
      const files = { cert: `${base}.crt`, key: `${base}.key` };
      const subject = `${groups.map((g) => `/O=${g}`).join("")}/CN=${user}`;
      openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subject, "-keyout", files.key, "-out", `${base}.csr`]);
      openssl(["x509", "-req", "-in", `${base}.csr`, "-CA", clientCa.cert, "-CAkey", clientCa.key, "-CAcreateserial", "-days", "1", "-out", files.cert]);
      return files;
    };

    const startAdapter = async (a: AdapterOptions): Promise<Adapter> => {
      const namespace = a.namespace ?? "podnet-system";
      const token = await serviceAccountToken(namespace, "podnet-apiserversource");
      await grantAdapter(kubeConfig(), namespace, "podnet-apiserversource");
      if (network === undefined && !(await portFree(ADAPTER_HEALTH_PORT)))
        throw new Error(`port ${ADAPTER_HEALTH_PORT} is in use: the adapter's health port is fixed`);
      const sourceConfig = {
        namespaces: a.namespaces ?? [],
        allNamespaces: a.namespaces === undefined,
        resources: [{ gvr: { Group: "", Version: "v1", Resource: "pods" }, ...(a.labelSelector === undefined ? {} : { selector: a.labelSelector }) }],
        mode: a.mode ?? "Resource",
      };
      const oidcAccount = "podnet-pods-oidc-sources.knative.dev-apiserversource";
      if (a.audience !== undefined) await grantOidcIdentity(kubeConfig(), namespace, "podnet-apiserversource", oidcAccount);
      const m = start("adapter", BIN.adapter, [], {
        ...(a.audience === undefined ? {} : { K_AUDIENCE: a.audience, K_OIDC_SERVICE_ACCOUNT: oidcAccount }),
        KUBECONFIG: writeKubeconfig("adapter", token, network === undefined ? "host" : "cluster"),
        K_SOURCE_CONFIG: JSON.stringify(sourceConfig),
        K_SINK: a.sink,
        NAMESPACE: namespace,
        NAME: "podnet-pods",
        SYSTEM_NAMESPACE: namespace,
        POD_NAME: "podnet-pods-adapter",
        PROFILING_PORT: String(await freePort()),
        K_LOGGING_CONFIG: JSON.stringify({
          zap_logger_config: JSON.stringify({
            level: "info",
            encoding: "json",
            outputPaths: ["stdout"],
            errorOutputPaths: ["stderr"],
            encoderConfig: { messageKey: "msg", levelKey: "level", timeKey: "ts" },
          }),
        }),
      });
      log("ApiServerSource adapter starting");
      const health = network === undefined ? undefined : await relayInto(network.netns, { host: "127.0.0.1", port: ADAPTER_HEALTH_PORT });
      try {
        await waitFor(
          "apiserver_receive_adapter",
          30_000,
          async () => (await httpStatus(`http://127.0.0.1:${health?.port ?? ADAPTER_HEALTH_PORT}/`)) > 0,
          exitedEarly(m),
        );
      } finally {
        await health?.stop();
      }
      return {
        logFile: path.join(dir, "adapter.log"),
        stop: async () => {
          if (m.child.pid !== undefined && running(m)) {
            killGroup(m.child.pid, "SIGTERM");
            await m.exited;
          }
        },
      };
    };

    const kubectlApply = (yaml: string): void => {
      const docs = (k8s.loadAllYaml(yaml) as (k8s.KubernetesObject | null)[]).filter((d): d is k8s.KubernetesObject => d !== null && typeof d === "object");
      const dump = (objects: readonly k8s.KubernetesObject[]): string => objects.map((o) => stringifyYaml(o)).join("---\n");
      const kubeconfig = writeKubeconfig("kubectl-apply", adminToken);
      const kubectl = (args: string[], input: string): void => {
        execFileSync(BIN.kubectl, ["--kubeconfig", kubeconfig, ...args], {
          input,
          encoding: "utf8",
          stdio: ["pipe", "pipe", "pipe"],
          maxBuffer: 64 * 1024 * 1024,
        });
      };
      const crds = docs.filter((d) => d.kind === "CustomResourceDefinition");
      if (crds.length > 0) {
        kubectl(["apply", "--server-side", "-f", "-"], dump(crds));
        kubectl(["wait", "--for", "condition=Established", "--timeout", "60s", "-f", "-"], dump(crds));
      }
      const rest = docs.filter((d) => d.kind !== "CustomResourceDefinition");
      if (rest.length > 0) kubectl(["apply", "--server-side", "-f", "-"], dump(rest));
    };

    const installCrds = (only?: "monitoring"): Promise<string[]> => {
      const crdDir = path.join(CACHE_DIR, "crds");
      const files = existsSync(crdDir)
        ? readdirSync(crdDir)
            .filter((f) => f.endsWith(".yaml") && (only === undefined || f.startsWith(`${only}-`)))
            .sort()
        : [];
      if (files.length === 0) throw new Error(`no Knative CRDs in ${crdDir}: run test/controlplane/build.sh`);
      const yaml = files.map((f) => readFileSync(path.join(crdDir, f), "utf8")).join("\n---\n");
      kubectlApply(yaml);
      return Promise.resolve(
        (k8s.loadAllYaml(yaml) as (k8s.KubernetesObject | null)[]).flatMap((d) => (d?.kind === "CustomResourceDefinition" ? [d.metadata?.name ?? ""] : [])),
      );
    };

    const applyYaml = async (text: string): Promise<string[]> => {
      const client = k8s.KubernetesObjectApi.makeApiClient(kubeConfig());
      const created: string[] = [];
      for (const doc of k8s.loadAllYaml(text) as (k8s.KubernetesObject | null)[]) {
        if (doc === null || typeof doc !== "object") continue;
        if (doc.metadata?.namespace !== undefined) await ensureNamespace(doc.metadata.namespace);
        await createIgnoringConflict(() => client.create(doc));
        if (doc.kind === "Namespace" && doc.metadata?.name !== undefined) await ensureNamespace(doc.metadata.name);
        created.push(`${doc.kind ?? "?"}/${doc.metadata?.name ?? "?"}`);
      }
      return created;
    };
    const applyManifest = async (file: string): Promise<void> => {
      await applyYaml(readFileSync(file, "utf8"));
    };

    return {
      dir,
      server,
      clusterServer,
      apiserverPid: apiserver.child.pid ?? -1,
      applyManifest,
      applyYaml,
      installCrds,
      kubectlApply,
      caFile,
      ca,
      adminToken,
      kubeConfig,
      writeKubeconfig,
      clientCertificate,
      ensureNamespace,
      serviceAccountToken,
      startAdapter,
      pids: () => processes.pids(),
      stop: async () => {
        await stopAll();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => {
      resolve(false);
    });
    server.listen(port, "127.0.0.1", () => {
      server.close(() => {
        resolve(true);
      });
    });
  });
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

async function createIgnoringConflict(create: () => Promise<unknown>): Promise<void> {
  try {
    await create();
  } catch (err) {
    if (err instanceof k8s.ApiException && err.code === 409) return;
    throw err;
  }
}

/** What ApiServerSource's adapter needs: watch pods everywhere, read its ConfigMaps, write Events. */
/** What Knative's source reconciler sets up: the OIDC identity, and the adapter's right to its tokens. */
async function grantOidcIdentity(kc: k8s.KubeConfig, namespace: string, adapterAccount: string, identity: string): Promise<void> {
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  await createIgnoringConflict(() => core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: identity } } }));
  await createIgnoringConflict(() =>
    rbac.createNamespacedRole({
      namespace,
      body: {
        metadata: { name: `${identity}-token` },
        rules: [{ apiGroups: [""], resources: ["serviceaccounts/token"], resourceNames: [identity], verbs: ["create"] }],
      },
    }),
  );
  await createIgnoringConflict(() =>
    rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: `${identity}-token` },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: `${identity}-token` },
        subjects: [{ kind: "ServiceAccount", name: adapterAccount, namespace }],
      },
    }),
  );
}

async function grantAdapter(kc: k8s.KubeConfig, namespace: string, serviceAccount: string): Promise<void> {
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const subject = { kind: "ServiceAccount", name: serviceAccount, namespace };
  await createIgnoringConflict(() =>
    rbac.createClusterRole({
      body: {
        metadata: { name: "podnet-apiserversource" },
        rules: [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] }],
      },
    }),
  );
  await createIgnoringConflict(() =>
    rbac.createClusterRoleBinding({
      body: {
        metadata: { name: `podnet-apiserversource-${namespace}` },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "podnet-apiserversource" },
        subjects: [subject],
      },
    }),
  );
  await createIgnoringConflict(() =>
    rbac.createNamespacedRole({
      namespace,
      body: {
        metadata: { name: "podnet-apiserversource" },
        rules: [
          { apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list", "watch"] },
          { apiGroups: ["", "events.k8s.io"], resources: ["events"], verbs: ["create", "patch"] },
        ],
      },
    }),
  );
  await createIgnoringConflict(() =>
    rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: "podnet-apiserversource" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "podnet-apiserversource" },
        subjects: [subject],
      },
    }),
  );
}
