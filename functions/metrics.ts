// The decision function's Prometheus metrics: one registry per function instance.
import { REFUSAL } from "../contract/refusals.ts";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export function createFunctionMetrics(options: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "podnet_function_" });
  return {
    registry,
    connections: new Counter({
      name: "podnet_function_http_connections_total",
      help: "TCP connections accepted. Senders keep theirs: one per event means a sender is not reusing them.",
      registers: [registry],
    }),
    events: new Counter({
      name: "podnet_function_events_total",
      help: "CloudEvents by type and outcome.",
      labelNames: ["type", "outcome"],
      registers: [registry],
    }),
    decisions: new Counter({
      name: "podnet_function_decisions_total",
      help: "Decisions by action and reason.",
      labelNames: ["action", "reason"],
      registers: [registry],
    }),
    decisionDuration: new Histogram({
      name: "podnet_function_decision_duration_seconds",
      help: "Time to decide one pod.",
      buckets: [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01],
      registers: [registry],
    }),
    dispatchDuration: new Histogram({
      name: "podnet_function_dispatch_duration_seconds",
      help: "Time from queueing a pod to its dispatch's outcome, retries included.",
      labelNames: ["result"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    queueAge: new Histogram({
      name: "podnet_function_dispatch_queue_age_seconds",
      help: "Time a decision waited in the dispatch queue before it was sent.",
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    }),
    queueDepth: new Gauge({ name: "podnet_function_dispatch_queue_pods", help: "Pods queued or in flight to node-runners.", registers: [registry] }),
    queueFull: new Counter({
      name: "podnet_function_dispatch_queue_full_total",
      help: "Pods not queued because the dispatch queue was full (answered 503).",
      registers: [registry],
    }),
    dispatchFailures: new Counter({
      name: "podnet_function_dispatch_failures_total",
      help: "Failed dispatches by HTTP status (0: no answer) and reason (the node-runner's refusal reason, http-<status>, bad-response, timeout, Node's error code, or other).",
      labelNames: ["status", "reason"],
      registers: [registry],
    }),
    redispatches: new Counter({
      name: "podnet_function_redispatches_total",
      help: "Retries, a second or more after the last send, that read the pod again and decided it again (the dispatch had failed in a way that can pass: no answer or 503).",
      registers: [registry],
    }),
    policyReloadFailures: new Counter({
      name: "podnet_function_policy_reload_failures_total",
      help: "Policy documents refused (the last good policy stays).",
      registers: [registry],
    }),
    authFailures: new Counter({
      name: "podnet_function_auth_failures_total",
      help: "Events refused because the sender is not authenticated or not allowed, by reason.",
      labelNames: ["reason"],
      registers: [registry],
    }),
    scrapesRefused: new Counter({
      name: "podnet_function_metrics_scrapes_refused_total",
      help: "Scrapes of /metrics refused (METRICS_AUTH=kubernetes), by HTTP status.",
      labelNames: ["status"],
      registers: [registry],
    }),
    resyncsLimited: new Counter({
      name: "podnet_function_resyncs_rate_limited_total",
      help: "Resync requests ignored because one ran less than the minimum interval ago.",
      registers: [registry],
    }),
    policyInfo: new Gauge({ name: "podnet_function_policy_info", help: "The policy in force (value 1).", labelNames: ["id", "mode"], registers: [registry] }),
  };
}
export type FunctionMetrics = ReturnType<typeof createFunctionMetrics>;

/**
 * A dispatch failure's reason as a label: the node-runner's refusal reasons, http-<status>,
 * bad-response and Node's error codes are closed sets; any other text (an error message, which may
 * name an address) becomes "other", so that the series stay bounded. The log keeps the text.
 */
export function dispatchFailureLabel(reason: string): string {
  if (Object.hasOwn(REFUSAL, reason) || reason === "bad-response" || reason === "timeout") return reason;
  return /^(?:http-\d{3}|E[A-Z0-9_]{2,40}|ERR_[A-Z0-9_]{2,60}|[A-Z][A-Z0-9_]{2,40})$/.test(reason) ? reason : "other";
}
