// Decision function entry point (a Knative Service). Configuration from the environment:
//
//   PORT                      listen port (Knative injects it)                        8080
//   POLICY_FILE               mounted policy YAML; built-in defaults when unset
//   SIGNING_KEYS_DIR          mounted Secret: Ed25519 private keys, <keyid>.pem       /etc/podnet/signing
//   NODE_RUNNER_PORT          the node-runners' port                                  19443
//   NODE_RUNNER_SCHEME        https | http                                            https
//   NODE_RUNNER_CA_FILE       the CA of the node-runners' certificate (https: required)
//   NODE_RUNNER_SERVER_NAME   the name in that certificate                            podnet-node-runner.podnet-system.svc
//   DISPATCH_TIMEOUT_MS, DISPATCH_CONCURRENCY                                         5000, 32
//   DISPATCH_PER_NODE         requests in flight to one node-runner                        8
//   DISPATCH_QUEUE_PODS       pods queued at most; more events are answered 503          10000
//   CONTROLLER_NAMESPACE      always excluded (the controller's own namespace)
//   NODE_RUNNER_ADDRESS       send every request to this address instead of the pod's hostIP (tests, demo)
//   KUBECONFIG                kubeconfig file; in-cluster config when unset
//   SENDER_AUTH               oidc | none: who may send events (Knative's OIDC sender     oidc
//                             identity, verified with a TokenReview)
//   SINK_AUDIENCE             the audience senders' tokens are for (the sources' and       serving.knative.dev/service/
//                             Triggers' sink audience)                                     <CONTROLLER_NAMESPACE>/podnet-decision
//   ALLOWED_SENDERS           ServiceAccount users allowed to send, comma-separated        the OIDC identities of the
//                                                                                         podnet-pods ApiServerSource,
//                                                                                         podnet-resync PingSource and
//                                                                                         the Broker variant's Triggers
//   RESYNC_MIN_INTERVAL_MS    a resync runs at most this often                            30000
//   METRICS_PORT              GET /metrics, on a port of its own (0: none; not one of   9095
//                             queue-proxy's: 8012, 8013, 8022, 8112, 9090, 9091)
//   METRICS_AUTH              none | kubernetes: whether a scrape needs a token allowed    none
//                             to get /metrics (plain HTTP: a token would cross the pod
//                             network in clear; the chart's NetworkPolicy guards the port)
//   DISPATCH_RETRY_DELAYS_MS  after a dispatch that can pass failed (no answer, 503):       100,200,400,1000,
//                             retry after each delay in turn, reading the pod again        2000,4000,8000,
//                             from a second on ("": never; the resync catches it)          15000,30000
import { readFileSync } from "node:fs";
import http from "node:http";
import { errorMessage } from "../lib/errors.ts";
import { apiConnection, type ApiConnection } from "../lib/kube-http.ts";
import { pino } from "pino";
import { NODE_RUNNER_SERVER_NAME } from "../contract/apply-request.ts";
import { KeyDirectory } from "../lib/key-directory.ts";
import { followFiles } from "../lib/tls-files.ts";
import { Dispatcher } from "./dispatch.ts";
import { KubeClusterReader } from "./kube.ts";
import { DISPATCH_RETRY_DELAYS_MS } from "./reconcile.ts";
import { PolicyStore } from "./policy-store.ts";
import type { Policy } from "./policy.ts";
import { tokenReviewer } from "../lib/token-review.ts";
import { knativeSenderIdentity, SenderAuthenticator } from "./sender-auth.ts";
import { createFunctionMetrics } from "./metrics.ts";
import { createFunctionApp } from "./server.ts";
import { createMetricsServer, ScrapeAuthorizer } from "../lib/metrics-server.ts";

const env = process.env;
const log = pino({ base: { component: "decision-function" } });
function retryDelays(): readonly number[] {
  const text = env.DISPATCH_RETRY_DELAYS_MS;
  if (text === undefined) return DISPATCH_RETRY_DELAYS_MS;
  const delays = text
    .split(",")
    .filter((d) => d.trim() !== "")
    .map(Number);
  if (delays.some((d) => !Number.isInteger(d) || d <= 0)) {
    log.fatal(`DISPATCH_RETRY_DELAYS_MS must be positive whole milliseconds, comma-separated, got ${text}`);
    process.exit(2);
  }
  return delays;
}

const number = (name: string, fallback: number): number => {
  const n = Number(env[name] ?? fallback);
  if (!Number.isFinite(n) || n <= 0) {
    log.fatal(`${name} must be a positive number, got ${env[name] ?? ""}`);
    process.exit(2);
  }
  return n;
};

const metrics = createFunctionMetrics();
/** Set once the app exists: what a policy reload does beyond the metric. */
let onPolicyReloaded: (policy: Policy) => void = () => undefined;
const policies = await PolicyStore.open({
  file: env.POLICY_FILE,
  ...(env.CONTROLLER_NAMESPACE === undefined ? {} : { controllerNamespace: env.CONTROLLER_NAMESPACE }),
  log,
  onRefused: () => {
    metrics.policyReloadFailures.inc();
  },
  onLoaded: (p) => {
    metrics.policyInfo.reset();
    metrics.policyInfo.set({ id: p.id, mode: p.document.mode }, 1);
    onPolicyReloaded(p);
  },
});
policies.watch();

const signing = new KeyDirectory(env.SIGNING_KEYS_DIR ?? "/etc/podnet/signing", "private", log);
await signing.start();

let kubeApi: ApiConnection;
try {
  kubeApi = await apiConnection(env.KUBECONFIG, env);
} catch (err) {
  log.fatal(`API server connection: ${errorMessage(err)}`);
  process.exit(2);
}

const scheme = env.NODE_RUNNER_SCHEME ?? "https";
if (scheme !== "https" && scheme !== "http") {
  log.fatal(`NODE_RUNNER_SCHEME must be https or http, got ${scheme}`);
  process.exit(2);
}
if (scheme === "https" && env.NODE_RUNNER_CA_FILE === undefined) {
  log.fatal("NODE_RUNNER_CA_FILE is required with https (the CA from `pnc keys generate`: node-runner-ca.configmap.yaml)");
  process.exit(2);
}
if (scheme === "http") log.warn("NODE_RUNNER_SCHEME=http: requests to node-runners are signed but not encrypted");
const dispatcher = new Dispatcher({
  signingKey: () => {
    const newest = signing.newest();
    if (newest === undefined) throw new Error("no signing key loaded");
    return { keyid: newest.keyid, privateKey: newest.key };
  },
  port: number("NODE_RUNNER_PORT", 19443),
  scheme,
  ...(env.NODE_RUNNER_CA_FILE === undefined ? {} : { ca: readFileSync(env.NODE_RUNNER_CA_FILE) }),
  serverName: env.NODE_RUNNER_SERVER_NAME ?? NODE_RUNNER_SERVER_NAME,
  timeoutMs: number("DISPATCH_TIMEOUT_MS", 5000),
  maxConcurrent: number("DISPATCH_CONCURRENCY", 32),
  maxPerNode: number("DISPATCH_PER_NODE", 8),
  ...(env.NODE_RUNNER_ADDRESS === undefined ? {} : { addressFor: () => env.NODE_RUNNER_ADDRESS ?? "" }),
});
// The CA ConfigMap is followed: during a rotation it holds the old and the new CA, and the
// function trusts both from the moment the kubelet updates the mount (README, Certificates).
const caFile = env.NODE_RUNNER_CA_FILE;
const stopFollowingCa =
  caFile === undefined
    ? undefined
    : followFiles(
        [caFile],
        ([ca]) => {
          if (ca === undefined) return;
          dispatcher.trust(ca);
          log.info({ certificates: (ca.toString("utf8").match(/-----BEGIN CERTIFICATE-----/g) ?? []).length }, "node-runner CA reloaded");
        },
        { pollMs: 10_000, log },
      );

const controllerNamespace = env.CONTROLLER_NAMESPACE ?? "podnet-system";
const senderAuth = env.SENDER_AUTH ?? "oidc";
if (senderAuth !== "oidc" && senderAuth !== "none") {
  log.fatal(`SENDER_AUTH must be oidc or none, got ${senderAuth}`);
  process.exit(2);
}
const allowedSenders = new Set(
  (
    env.ALLOWED_SENDERS ??
    [
      knativeSenderIdentity(controllerNamespace, "podnet-pods", "ApiServerSource"),
      knativeSenderIdentity(controllerNamespace, "podnet-resync", "PingSource"),
      // The Broker variant's Triggers (eventing/broker/broker.yaml).
      knativeSenderIdentity(controllerNamespace, "podnet-pod-events", "Trigger"),
      knativeSenderIdentity(controllerNamespace, "podnet-resync", "Trigger"),
    ].join(",")
  )
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== ""),
);
const auth =
  senderAuth === "oidc"
    ? new SenderAuthenticator({
        audience: env.SINK_AUDIENCE ?? `serving.knative.dev/service/${controllerNamespace}/podnet-decision`,
        allowed: allowedSenders,
        review: tokenReviewer(kubeApi),
      })
    : undefined;
if (auth === undefined) log.warn("SENDER_AUTH=none: anyone who can reach the function can send it events");

const app = createFunctionApp({
  policy: () => policies.current,
  dispatcher,
  cluster: new KubeClusterReader(kubeApi),
  log,
  metrics,
  ...(auth === undefined ? {} : { auth }),
  resyncMinIntervalMs: number("RESYNC_MIN_INTERVAL_MS", 30_000),
  retryDelaysMs: retryDelays(),
  maxQueuedPods: number("DISPATCH_QUEUE_PODS", 10_000),
  // Without a key it can sign nothing: not ready, so the revision gets no traffic.
  notReady: () =>
    signing.newest() === undefined
      ? `no usable Ed25519 private key in ${env.SIGNING_KEYS_DIR ?? "/etc/podnet/signing"} (is the Secret mounted world-readable for a non-root user?)`
      : undefined,
});
// A new mode (fail-open, the incident switch, above all) reaches the pods waiting now at once,
// not only with their next events or the next resync tick.
let modeInForce = policies.current.document.mode;
onPolicyReloaded = (policy) => {
  if (policy.document.mode === modeInForce) return;
  modeInForce = policy.document.mode;
  const plog = log.child({ trigger: "policy-mode", mode: modeInForce });
  app.queue.resync(policy, plog).then(
    (done) => {
      plog.info({ resync: done.summary }, "resync after a policy mode change");
    },
    (err: unknown) => {
      plog.warn({ err: errorMessage(err) }, "resync after a policy mode change failed; the next resync tick does it");
    },
  );
};
const port = number("PORT", 8080);
// Whoever reaches the port opens connections before any token is seen: headers and bodies must
// arrive in time (checked every second), so slow uploads do not hold sockets or memory.
const server = http.createServer({ headersTimeout: 10_000, requestTimeout: 30_000, connectionsCheckingInterval: 1000 }, app);
server.maxHeadersCount = 64;
// Bounded whoever connects: queue-proxy is the only intended client, but the pod IP is reachable too.
server.maxConnections = 1024;
// Idle connections stay open longer than Go's transports keep them (90 s; Knative's adapters and
// queue-proxy): a server that closes first races the sender's next POST on that connection,
// which Go does not retry.
server.keepAliveTimeout = 95_000;
let draining = false;
server.on("connection", () => {
  metrics.connections.inc();
});
// While draining, a request on a kept connection is the last one on it.
server.prependListener("request", (_req, res) => {
  if (draining) res.setHeader("connection", "close");
});
// Metrics apart from the events: scraping never competes with queue-proxy's requests.
const metricsPort = Number(env.METRICS_PORT ?? 9095);
if (!Number.isInteger(metricsPort) || metricsPort < 0 || metricsPort > 65535 || metricsPort === port) {
  log.fatal(`METRICS_PORT must be a port other than PORT (0: none), got ${env.METRICS_PORT ?? ""}`);
  process.exit(2);
}
const metricsAuth = env.METRICS_AUTH ?? "none";
if (metricsAuth !== "kubernetes" && metricsAuth !== "none") {
  log.fatal(`METRICS_AUTH must be none or kubernetes, got ${metricsAuth}`);
  process.exit(2);
}
const metricsServer =
  metricsPort === 0
    ? undefined
    : createMetricsServer({
        registry: metrics.registry,
        ...(metricsAuth === "kubernetes" ? { authorizer: ScrapeAuthorizer.forApiServer(kubeApi) } : {}),
        onRefused: (status) => {
          metrics.scrapesRefused.inc({ status: String(status) });
        },
      });
metricsServer?.listen(metricsPort, () => {
  log.info({ metricsPort, auth: metricsAuth }, "metrics served");
});

server.listen(port, () => {
  log.info(
    {
      port,
      policy: policies.current.id,
      senderAuth,
      allowedSenders: auth === undefined ? undefined : [...allowedSenders],
      nodeRunner: `${scheme}://<hostIP>:${env.NODE_RUNNER_PORT ?? 19443}`,
    },
    "decision function listening",
  );
});

// Knative sends SIGTERM before stopping a revision: stop accepting, finish what is in flight.
process.once("SIGTERM", () => {
  log.info({ inFlight: app.inFlight(), queued: app.queue.queued }, "SIGTERM: draining");
  // Stop taking events, answer those in flight, then send what was queued for them. A kept
  // connection closes once it is idle: its request in flight answered.
  draining = true;
  metricsServer?.close();
  const closeIdle = setInterval(() => {
    server.closeIdleConnections();
  }, 50);
  server.close(() => {
    clearInterval(closeIdle);
    void app.queue.whenIdle().then(() => {
      dispatcher.close();
      policies.stop();
      signing.stop();
      stopFollowingCa?.();
      log.info("drained");
      process.exit(0);
    });
  });
  setTimeout(() => process.exit(0), 25_000).unref();
});
