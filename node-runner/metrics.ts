// Prometheus metrics of the node-runner (GET /metrics on the metrics port: lib/metrics-server.ts).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface NodeRunnerMetrics {
  readonly registry: Registry;
  readonly requests: Counter<"route" | "result">;
  readonly signatureFailures: Counter<"reason">;
  readonly eventFailures: Counter<"reason">;
  readonly eventsPending: Gauge;
  readonly tlsCertificateNotAfter: Gauge;
  readonly scrapesRefused: Counter<"status">;
  readonly applyDuration: Histogram<"result">;
  readonly netnsDuration: Histogram<"outcome">;
  readonly netnsRecords: Gauge;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): NodeRunnerMetrics {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "podnet_node_runner_" });
  return {
    registry,
    requests: new Counter({
      name: "podnet_node_runner_requests_total",
      help: "Requests by route (apply, refuse, skip) and result (applied, unchanged, refused, skipped, kept-initialized, error, or the refusal reason).",
      labelNames: ["route", "result"],
      registers: [registry],
    }),
    scrapesRefused: new Counter({
      name: "podnet_node_runner_metrics_scrapes_refused_total",
      help: "Scrapes of /metrics refused, by HTTP status (401 no valid token, 403 not allowed, 503 reviews busy or the API server unreachable).",
      labelNames: ["status"],
      registers: [registry],
    }),
    signatureFailures: new Counter({
      name: "podnet_node_runner_signature_failures_total",
      help: "Requests refused by signature verification, by reason.",
      labelNames: ["reason"],
      registers: [registry],
    }),
    eventFailures: new Counter({
      name: "podnet_node_runner_event_failures_total",
      help: "Kubernetes Events that could not be recorded (they follow the answer), by Event reason; <reason>-dropped: not sent, too many waiting.",
      labelNames: ["reason"],
      registers: [registry],
    }),
    eventsPending: new Gauge({
      name: "podnet_node_runner_events_pending",
      help: "Kubernetes Events being sent or waiting to be (two at a time, once no pod has been programmed for --event-quiet-ms, or at the latest 5 s after they were recorded).",
      registers: [registry],
    }),
    tlsCertificateNotAfter: new Gauge({
      name: "podnet_node_runner_tls_certificate_not_after_seconds",
      help: "When the serving certificate (the API's and the metrics port's) expires, in Unix seconds (it follows a renewed certificate: alert when it comes within 30 days).",
      registers: [registry],
    }),
    applyDuration: new Histogram({
      name: "podnet_node_runner_apply_duration_seconds",
      help: "Time to render, compare and apply a pod's rules (netns resolution excluded).",
      labelNames: ["result"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    netnsRecords: new Gauge({
      name: "podnet_node_runner_netns_records",
      help: "Records of programmed network namespaces in the state directory after the last sweep (one per mesh pod on the node: those of gone namespaces are removed every --record-sweep-ms).",
      registers: [registry],
    }),
    netnsDuration: new Histogram({
      name: "podnet_node_runner_netns_resolution_duration_seconds",
      help: "Time to find a pod's network namespace by scanning /proc.",
      labelNames: ["outcome"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      registers: [registry],
    }),
  };
}
