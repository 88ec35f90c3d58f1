// node-runner entry point: configuration from flags and environment, then the HTTP(S) server.
//
//   --node-name / NODE_NAME            this node (downward API spec.nodeName)         required
//   --listen / LISTEN_ADDRESS          address:port ([address]:port for IPv6)         0.0.0.0:19443
//   --listen-port / LISTEN_PORT        or only a port, on the node's IP (--host-ip):   (the DaemonSet's way:
//                                      IPv4 or IPv6 alike                              HOST_IP and 19443)
//   --keys-dir / PUBLIC_KEYS_DIR       mounted public keys, one PEM per keyid          /etc/podnet/keys
//   --kubeconfig / KUBECONFIG          kubeconfig file; in-cluster config when unset
//   --state-dir / STATE_DIR            per-netns records (a tmpfs)                    /run/podnet
//   --pod-namespace / POD_NAMESPACE    the DaemonSet's namespace (downward API): on    (none: state
//                                      SIGTERM, the state goes when the DaemonSet is   always kept)
//                                      being deleted (an uninstall)
//   --backend / RULES_BACKEND          auto | iptables-legacy | iptables-nft | nftables  auto
//                                      (auto: iptables, the variant holding rules in the pod's
//                                      netns, else the node's; nftables: native, one nft -f)
//   --host-ip / HOST_IP                this node's IP(s), comma-separated (downward API  the listen
//                                      status.hostIP): the signed @authority must be     address
//                                      one of them with the listen port
//   --proc / PROC_ROOT                 the host's /proc (hostPID)                      /proc
//   --cgroup-fs / CGROUP_FS            the host's cgroup filesystem (mounted read-only)  /sys/fs/cgroup
//   --cgroup-root / CGROUP_ROOT        the kubelet's --cgroup-root (pods' cgroups lie   /
//                                      directly under <root>/kubepods[.slice])
//   --tls-cert, --tls-key / TLS_CERT, TLS_KEY   serve HTTPS with these files           (HTTP when unset)
//   --max-concurrent / MAX_CONCURRENT  pods programmed at once                        8
//   --api-timeout-ms / API_TIMEOUT_MS  deadline of every Kubernetes API call          5000
//   --netns-exec / NETNS_EXEC          the command helper (node-runner/netns-exec)     podnet-netns-exec
//                                      (a path, or looked up on PATH)
//   --metrics-listen / METRICS_LISTEN  GET /metrics, on a port of its own ("" for none)  <listen host>:19090
//   --metrics-port / METRICS_PORT      or only its port, on the listen host
//                                      (HTTPS with the same certificate as the API)
//   --record-sweep-ms / RECORD_SWEEP_MS  how often the records of gone namespaces      300000
//                                      (deleted pods) are removed (ms, ≥ 1000)
//   --metrics-auth / METRICS_AUTH      kubernetes | none: whether a scrape needs a token  kubernetes
//                                      allowed to get /metrics (TokenReview +
//                                      SubjectAccessReview)
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import http from "node:http";
import https from "node:https";
import { parseArgs } from "node:util";
import { pino } from "pino";
import { RecordStore, type IptablesVariant } from "./apply/records.ts";
import { helperRunner, NETNS_EXEC, resolveExecutable } from "./helper-runner.ts";
import { applierChooser, BACKENDS, isBackendName, type BackendName } from "./backends.ts";
import { daemonSetLeaving, KubePodApi } from "./kube.ts";
import { apiConnection as connectTo, type ApiConnection } from "../lib/kube-http.ts";
import { KeyDirectory } from "../lib/key-directory.ts";
import { createMetrics } from "./metrics.ts";
import { hostNetnsInode, liveNetnsInodes, podUidPattern, resolvePodNetns } from "./netns.ts";
import { ReplayCache } from "./replay.ts";
import { createPodProgrammer, EVENT_MAX_DELAY_MS, EVENT_QUIET_MS } from "./program.ts";
import { createNodeRunnerApp, HEADERS_TIMEOUT_MS, MAX_CONNECTIONS, REQUEST_TIMEOUT_MS, type NodeRunnerDeps } from "./server.ts";
import { errorMessage } from "../lib/errors.ts";
import { followFiles, readServingTls, type ServingTls } from "../lib/tls-files.ts";
import { formatHostPort, resolveListenAddress } from "../lib/listen-address.ts";
import { createMetricsServer, ScrapeAuthorizer } from "../lib/metrics-server.ts";

const { values } = parseArgs({
  options: {
    "node-name": { type: "string" },
    "netns-exec": { type: "string" },
    listen: { type: "string" },
    "listen-port": { type: "string" },
    "metrics-port": { type: "string" },
    "keys-dir": { type: "string" },
    kubeconfig: { type: "string" },
    "state-dir": { type: "string" },
    "pod-namespace": { type: "string" },
    backend: { type: "string" },
    proc: { type: "string" },
    "host-ip": { type: "string" },
    "cgroup-root": { type: "string" },
    "cgroup-fs": { type: "string" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
    "max-concurrent": { type: "string" },
    "metrics-listen": { type: "string" },
    "metrics-auth": { type: "string" },
    "api-timeout-ms": { type: "string" },
    "event-quiet-ms": { type: "string" },
    "record-sweep-ms": { type: "string" },
  },
});
const env = process.env;
const log = pino({ base: { component: "node-runner" } });

function fail(message: string): never {
  log.fatal(message);
  process.exit(2);
}

const nodeName = values["node-name"] ?? env.NODE_NAME ?? fail("--node-name (or NODE_NAME) is required");
// The addresses requests are signed for: the node's IP(s) (the function dispatches to the pod's
// status.hostIP) and the listen address unless it is a wildcard.
const startedAtMs = Date.now();
const hostIPs = (values["host-ip"] ?? env.HOST_IP ?? "")
  .split(",")
  .map((a) => a.trim())
  .filter((a) => a !== "");
const listening = resolveListenAddress({
  address: values.listen ?? env.LISTEN_ADDRESS,
  port: values["listen-port"] ?? env.LISTEN_PORT,
  hostIPs,
  fallback: { host: "0.0.0.0", port: 19443 },
});
if ("error" in listening) fail(`--listen / --listen-port: ${listening.error}`);
const { host, port } = listening;
const listen = formatHostPort(host, port);
const metricsListening =
  (values["metrics-listen"] ?? env.METRICS_LISTEN) === ""
    ? undefined
    : resolveListenAddress({
        address: values["metrics-listen"] ?? env.METRICS_LISTEN,
        port: values["metrics-port"] ?? env.METRICS_PORT,
        hostIPs: [host],
        fallback: { host, port: 19090 },
      });
if (metricsListening !== undefined && "error" in metricsListening) fail(`--metrics-listen / --metrics-port: ${metricsListening.error}`);
const metricsListen = metricsListening;
const metricsListenText = metricsListen === undefined ? "" : formatHostPort(metricsListen.host, metricsListen.port);
const metricsAuth = values["metrics-auth"] ?? env.METRICS_AUTH ?? "kubernetes";
if (metricsAuth !== "kubernetes" && metricsAuth !== "none") fail(`--metrics-auth must be kubernetes or none, got ${metricsAuth}`);
if (!["", "0.0.0.0", "::"].includes(host) && !hostIPs.includes(host)) hostIPs.push(host);
if (hostIPs.length === 0)
  fail("--host-ip (or HOST_IP, from status.hostIP) is required when listening on a wildcard address: signed requests name the address they are for");
const authorities = new Set(hostIPs.map((ip) => formatHostPort(ip.toLowerCase(), port)));
const backendFlag = values.backend ?? env.RULES_BACKEND ?? "auto";
if (backendFlag !== "auto" && !isBackendName(backendFlag)) fail(`--backend must be auto, ${BACKENDS.join(", ")}; got ${backendFlag}`);
const backend: BackendName | "auto" = backendFlag;
const maxConcurrent = Number(values["max-concurrent"] ?? env.MAX_CONCURRENT ?? "8");
const apiTimeoutMs = Number(values["api-timeout-ms"] ?? env.API_TIMEOUT_MS ?? "5000");
if (!Number.isInteger(apiTimeoutMs) || apiTimeoutMs < 100) fail(`--api-timeout-ms must be an integer ≥ 100, got ${apiTimeoutMs}`);
const eventQuietMs = Number(values["event-quiet-ms"] ?? env.EVENT_QUIET_MS ?? String(EVENT_QUIET_MS));
if (!Number.isInteger(eventQuietMs) || eventQuietMs < 0 || eventQuietMs > 60_000)
  fail(`--event-quiet-ms must be an integer from 0 to 60000, got ${eventQuietMs}`);
const recordSweepMs = Number(values["record-sweep-ms"] ?? env.RECORD_SWEEP_MS ?? "300000");
if (!Number.isInteger(recordSweepMs) || recordSweepMs < 1000) fail(`--record-sweep-ms must be an integer ≥ 1000, got ${recordSweepMs}`);
const procRoot = values.proc ?? env.PROC_ROOT ?? "/proc";
const cgroupRoot = values["cgroup-root"] ?? env.CGROUP_ROOT ?? "/";
const cgroupFs = values["cgroup-fs"] ?? env.CGROUP_FS ?? "/sys/fs/cgroup";
try {
  podUidPattern("0", cgroupRoot);
} catch (err) {
  fail(`--cgroup-root: ${errorMessage(err)}`);
}

const kubeconfigFile = values.kubeconfig ?? env.KUBECONFIG;
let apiConnection: ApiConnection;
try {
  apiConnection = await connectTo(kubeconfigFile, env);
} catch (err) {
  fail(`API server connection: ${errorMessage(err)}`);
}

// The node's own iptables flavour, for namespaces that hold no rules yet: the variant that
// holds rules in the host's network namespace (the runner's own: hostNetwork), as kube-proxy
// and the CNI wrote them — not whatever the image's `iptables` link points at. Read only.
function nodeDefaultVariant(): IptablesVariant {
  for (const variant of ["iptables-nft", "iptables-legacy"] as const) {
    try {
      if (/^-A /m.test(execFileSync(`${variant}-save`, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }))) return variant;
    } catch {
      // that variant is not usable here
    }
  }
  return "iptables-nft";
}
const defaultVariant = nodeDefaultVariant();
const stateDir = values["state-dir"] ?? env.STATE_DIR ?? "/run/podnet";
const records = new RecordStore(stateDir);
mkdirSync(stateDir, { recursive: true });
const replay = new ReplayCache(100_000, { path: path.join(stateDir, "nonces.jsonl"), nowMs: startedAtMs });
// Commands run through a small long-lived helper: no fork of this large process per command.
const netnsExec = values["netns-exec"] ?? env.NETNS_EXEC ?? NETNS_EXEC;
const helper = helperRunner(resolveExecutable(netnsExec) ?? fail(`the command helper ${netnsExec} is not found (--netns-exec, NETNS_EXEC, or PATH)`));

const keys = new KeyDirectory(values["keys-dir"] ?? env.PUBLIC_KEYS_DIR ?? "/etc/podnet/keys", "public", log);
await keys.start();

const metrics = createMetrics();
const pods = new KubePodApi(apiConnection, nodeName, apiTimeoutMs);

/** Set by SIGTERM/SIGINT: requests are then refused and connections closed (server.ts). */
let stopping = false;
const runnerDeps: NodeRunnerDeps = {
  nodeName,
  authorities,
  startedAtMs,
  keys,
  replay,
  pods,
  resolveNetns: (pod) => resolvePodNetns(pod, { procRoot, cgroupRoot, cgroupFs }),
  applierFor: applierChooser({ backend, records, nodeDefault: defaultVariant, run: helper.run, nftTables: helper.nftTables }),
  log,
  metrics,
  maxConcurrent,
  eventTiming: { quietMs: eventQuietMs, maxDelayMs: Math.max(EVENT_MAX_DELAY_MS, eventQuietMs) },
  stopping: () => stopping,
};
const programmer = createPodProgrammer(runnerDeps);
const app = createNodeRunnerApp(runnerDeps, programmer);

const tlsCert = values["tls-cert"] ?? env.TLS_CERT;
const tlsKey = values["tls-key"] ?? env.TLS_KEY;
if ((tlsCert === undefined) !== (tlsKey === undefined)) fail("--tls-cert and --tls-key go together");
if (tlsCert === undefined) log.warn("no --tls-cert/--tls-key: serving plain HTTP (requests are signed, not encrypted)");
// Used by both servers, and followed: a renewed certificate (the mounted Secret updated) is
// served from the next connection on. Its expiry is a metric.
let tls: ServingTls | undefined;
try {
  tls = tlsCert !== undefined && tlsKey !== undefined ? readServingTls(tlsCert, tlsKey) : undefined;
} catch (err) {
  fail(`--tls-cert/--tls-key: ${errorMessage(err)}`);
}
const noteExpiry = (notAfter: number): void => {
  metrics.tlsCertificateNotAfter.set(notAfter);
  if (notAfter * 1000 - Date.now() < 30 * 86_400_000)
    log.warn({ notAfter: new Date(notAfter * 1000).toISOString() }, "the TLS certificate expires within 30 days: renew it (README, Certificates)");
};
if (tls !== undefined) noteExpiry(tls.notAfter);
// Whoever can reach the port can open connections before any signature is seen: each is
// bounded in count and in how long its headers and body may take (checked every second, not
// Node's default 30 s), so slow uploads cannot hold the runner's sockets or memory.
const connectionLimits = { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: 1000 };
const server = tls !== undefined ? https.createServer({ cert: tls.cert, key: tls.key, ...connectionLimits }, app) : http.createServer(connectionLimits, app);
server.maxConnections = MAX_CONNECTIONS;
server.maxHeadersCount = 64;
server.listen(port, host, () => {
  log.info(
    {
      nodeName,
      listen,
      authorities: [...authorities],
      tls: tlsCert !== undefined,
      backend: backend === "auto" ? `auto (iptables; node default ${defaultVariant})` : backend,
    },
    "node-runner listening",
  );
});

// The records of namespaces that are gone (their pods deleted) go: kept, they would fill the
// tmpfs with one per pod the node ever ran. The scan and the removal run in one tick, so no
// apply writes a record in between. Without a trustworthy /proc (no hostPID) nothing is removed.
function sweepRecords(): void {
  const started = performance.now();
  const host = hostNetnsInode(procRoot);
  if ("error" in host) {
    log.warn({ err: host.error }, "records not swept: the node's processes cannot be listed");
    return;
  }
  const live = liveNetnsInodes(procRoot);
  if (!live.has(host.inode)) {
    log.warn({ procRoot }, "records not swept: the node's own network namespace is not among its processes' (no hostPID?)");
    return;
  }
  try {
    const { removed, kept } = records.sweep(live);
    metrics.netnsRecords.set(kept);
    if (removed > 0) log.info({ removed, kept, durationMs: Math.round(performance.now() - started) }, "records of gone network namespaces removed");
  } catch (err) {
    log.warn({ err: errorMessage(err) }, "records not swept");
  }
}
sweepRecords();
const recordSweep = setInterval(sweepRecords, recordSweepMs);
recordSweep.unref();

// Metrics apart from the signed API: a hostNetwork port no NetworkPolicy can guard, so a
// scrape needs a token allowed to get /metrics unless the operator says otherwise.
const metricsServer =
  metricsListen === undefined
    ? undefined
    : createMetricsServer({
        registry: metrics.registry,
        ...(metricsAuth === "kubernetes" ? { authorizer: ScrapeAuthorizer.forApiServer(apiConnection) } : {}),
        ...(tls === undefined ? {} : { tls: { cert: tls.cert, key: tls.key } }),
        onRefused: (status) => {
          metrics.scrapesRefused.inc({ status: String(status) });
        },
      });
if (metricsAuth === "none" && metricsServer !== undefined) log.warn("--metrics-auth=none: anyone who reaches the metrics port may read it");
const stopFollowingTls =
  tlsCert === undefined || tlsKey === undefined
    ? undefined
    : followFiles(
        [tlsCert, tlsKey],
        () => {
          let next: ServingTls;
          try {
            next = readServingTls(tlsCert, tlsKey);
          } catch (err) {
            log.error({ err: errorMessage(err) }, "the renewed TLS files are not usable: still serving the certificate loaded before");
            return;
          }
          for (const s of [server, metricsServer]) if (s instanceof https.Server) s.setSecureContext({ cert: next.cert, key: next.key });
          noteExpiry(next.notAfter);
          log.info({ notAfter: new Date(next.notAfter * 1000).toISOString() }, "TLS certificate reloaded: new connections get it");
        },
        { pollMs: 10_000, log },
      );
metricsServer?.listen(metricsListen?.port, metricsListen?.host, () => {
  log.info({ metrics: metricsListenText, auth: metricsAuth }, "metrics served");
});

const podNamespace = values["pod-namespace"] ?? env.POD_NAMESPACE;
/**
 * An uninstall deletes the DaemonSet (the chart's pre-delete hook, in the foreground, before the
 * runner's own RBAC goes): this runner's records and nonce journal are then of no use to anyone
 * and leave the node with it. A rolling update or a restart keeps them.
 */
async function removeStateIfUninstalled(): Promise<void> {
  if (podNamespace === undefined || podNamespace === "") return;
  const leaving = await daemonSetLeaving(apiConnection, podNamespace, Math.min(apiTimeoutMs, 3000));
  if (leaving === undefined) {
    log.warn({ stateDir }, "cannot tell whether the DaemonSet is being deleted: the state stays");
    return;
  }
  if (!leaving) return;
  for (const entry of readdirSync(stateDir)) rmSync(path.join(stateDir, entry), { recursive: true, force: true });
  log.info({ stateDir }, "the DaemonSet is being deleted (an uninstall): the state on this node is removed");
}

function shutdown(signal: string): void {
  log.info({ signal }, "shutting down: finishing requests in flight, then sending the Events still waiting");
  stopping = true;
  clearInterval(recordSweep);
  keys.stop();
  stopFollowingTls?.();
  metricsServer?.close();
  // Completes once every connection has ended: idle ones now, busy ones with their answer.
  server.close(() => {
    helper.stop();
    void programmer
      .flushEvents()
      .then(removeStateIfUninstalled)
      .catch((err: unknown) => {
        log.warn({ err: errorMessage(err) }, "removing the state failed");
      })
      .then(() => process.exit(0));
  });
  // What is not done by then is dropped (the kubelet's grace period is 30 s by default).
  setTimeout(() => {
    log.warn({ eventsPending: programmer.pendingEvents }, "shutting down before everything was sent");
    process.exit(0);
  }, 10_000).unref();
}
process.once("SIGTERM", () => {
  shutdown("SIGTERM");
});
process.once("SIGINT", () => {
  shutdown("SIGINT");
});
