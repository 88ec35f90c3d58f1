// The monitoring that ships with the chart, checked with Prometheus' own promtool (built from the
// prometheus/prometheus module by test/controlplane/build.sh): the alerting rules are valid and
// fire as test/monitoring/alerts.test.yaml says; the dashboard's queries are valid PromQL; both
// name only metrics the components export; the components' metrics pages pass promtool's lint.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { parse as parseYaml, stringify } from "yaml";
import { createFunctionMetrics } from "../../functions/metrics.ts";
import { createMetrics } from "../../node-runner/metrics.ts";
import { projectMetrics } from "../../scripts/generate-docs.ts";
import { BIN } from "../controlplane/harness.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { scratchDir } from "../support/components.ts";

const root = path.resolve(import.meta.dirname, "../..");
const RULES = path.join(root, "config/monitoring/alerts.rules.yaml");
const DASHBOARD = path.join(root, "config/monitoring/dashboard.json");
const missing = existsSync(BIN.promtool) ? undefined : "promtool not built: run test/controlplane/build.sh";

function promtool(args: readonly string[], input?: string): { status: number | null; output: string } {
  const r = spawnSync(BIN.promtool, args, { cwd: root, encoding: "utf8", ...(input === undefined ? {} : { input }) });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

interface Panel {
  readonly id: number;
  readonly type: string;
  readonly title: string;
  readonly gridPos: { readonly x: number; readonly y: number; readonly w: number; readonly h: number };
  readonly targets?: readonly { readonly expr: string }[];
}
const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: Panel[]; uid: string; templating: { list: { name: string }[] } };
/** The dashboard's queries, Grafana's variables given values Prometheus takes. */
const dashboardQueries = (): string[] =>
  dashboard.panels.flatMap((p) =>
    (p.targets ?? []).map((t) => t.expr.replaceAll("$__rate_interval", "5m").replaceAll("$__range", "1h").replaceAll("$namespace", ".*")),
  );
const ruleExpressions = (): string[] =>
  (parseYaml(readFileSync(RULES, "utf8")) as { groups: { rules: { expr: string }[] }[] }).groups.flatMap((g) => g.rules.map((r) => r.expr));

/** The project's metric names a PromQL expression reads (a histogram's series by their metric). */
const podnetMetricsIn = (expr: string): string[] => [...expr.matchAll(/\bpodnet_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, ""));

describe("monitoring: alerting rules, dashboard, metrics pages [needs promtool]", skipUnlessCI(missing), () => {
  test("promtool check rules: the alerting rules are valid", () => {
    assertAvailable(missing);
    const r = promtool(["check", "rules", RULES]);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /SUCCESS: 15 rules found/);
  });

  test("promtool test rules: each alert fires on trouble with its labels and text, and none on a healthy install", () => {
    assertAvailable(missing);
    const r = promtool(["test", "rules", "test/monitoring/alerts.test.yaml"]);
    assert.equal(r.status, 0, r.output);
    // Every alert of the rules file is tested.
    const tests = parseYaml(readFileSync(path.join(root, "test/monitoring/alerts.test.yaml"), "utf8")) as {
      tests: { alert_rule_test: { alertname: string; exp_alerts?: unknown[] }[] }[];
    };
    const fired = new Set(tests.tests.flatMap((t) => t.alert_rule_test.filter((a) => (a.exp_alerts?.length ?? 0) > 0).map((a) => a.alertname)));
    const alerts = new Set(
      (parseYaml(readFileSync(RULES, "utf8")) as { groups: { rules: { alert: string }[] }[] }).groups.flatMap((g) => g.rules.map((x) => x.alert)),
    );
    assert.deepEqual(
      [...alerts].filter((a) => !fired.has(a)),
      [],
    );
  });

  test("the dashboard's queries are valid PromQL, its panels have unique ids and do not overlap", () => {
    assertAvailable(missing);
    const scratch = scratchDir("pnc-dashboard-");
    try {
      // promtool parses recording rules' expressions: each query becomes one.
      const file = path.join(scratch.dir, "dashboard.rules.yaml");
      writeFileSync(
        file,
        stringify({ groups: [{ name: "dashboard", rules: dashboardQueries().map((expr, i) => ({ record: `podnet:dashboard_query_${i}`, expr })) }] }),
      );
      const r = promtool(["check", "rules", file]);
      assert.equal(r.status, 0, r.output);
    } finally {
      scratch.remove();
    }
    const ids = dashboard.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, "unique panel ids");
    const cells = new Set<string>();
    for (const p of dashboard.panels) {
      assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the 24 columns`);
      for (let x = p.gridPos.x; x < p.gridPos.x + p.gridPos.w; x++) {
        for (let y = p.gridPos.y; y < p.gridPos.y + p.gridPos.h; y++) {
          assert.ok(!cells.has(`${x},${y}`), `${p.title} overlaps another panel at ${x},${y}`);
          cells.add(`${x},${y}`);
        }
      }
    }
    assert.deepEqual(
      dashboard.templating.list.map((v) => v.name),
      ["datasource", "namespace"],
    );
  });

  test("the alerts and the dashboard name only metrics the components export, and the dashboard shows every metric worth a panel", () => {
    const exported = new Set(projectMetrics().flatMap((c) => c.rows.map((r) => r.name)));
    // Node's process metrics, under each component's prefix.
    for (const registry of [createMetrics().registry, createFunctionMetrics().registry]) {
      for (const m of registry.getMetricsAsArray()) exported.add((m as unknown as { name: string }).name);
    }
    const named = [...ruleExpressions(), ...dashboardQueries()].flatMap(podnetMetricsIn);
    assert.deepEqual(
      [...new Set(named)].filter((n) => !exported.has(n)),
      [],
    );
    const shown = new Set(dashboardQueries().flatMap(podnetMetricsIn));
    const notShown = projectMetrics()
      .flatMap((c) => c.rows.map((r) => r.name))
      .filter((n) => !shown.has(n));
    // Left out on purpose: scrape refusals, the records per node (they follow its mesh pods), connection counts, rate-limited resyncs, queue age and decision time (in the reference).
    assert.deepEqual(notShown, [
      "podnet_node_runner_metrics_scrapes_refused_total",
      "podnet_node_runner_netns_records",
      "podnet_function_http_connections_total",
      "podnet_function_decision_duration_seconds",
      "podnet_function_dispatch_queue_age_seconds",
      "podnet_function_metrics_scrapes_refused_total",
      "podnet_function_resyncs_rate_limited_total",
    ]);
  });

  test("the components' metrics pages, with every labelled series present, pass promtool check metrics (but prom-client's own three nodejs_active_* gauges)", async () => {
    assertAvailable(missing);
    const runner = createMetrics();
    runner.requests.inc({ route: "apply", result: "applied" });
    runner.signatureFailures.inc({ reason: "expired" });
    runner.eventFailures.inc({ reason: "NetworkInitialized-dropped" });
    runner.scrapesRefused.inc({ status: "401" });
    runner.applyDuration.observe({ result: "applied" }, 0.01);
    runner.netnsDuration.observe({ outcome: "found" }, 0.001);
    runner.tlsCertificateNotAfter.set(2_000_000_000);
    const fn = createFunctionMetrics();
    fn.events.inc({ type: "dev.knative.apiserver.resource.update", outcome: "handled" });
    fn.decisions.inc({ action: "apply", reason: "needs-rules" });
    fn.dispatchDuration.observe({ result: "applied" }, 0.02);
    fn.dispatchFailures.inc({ status: "503", reason: "netns-not-found" });
    fn.authFailures.inc({ reason: "missing-token" });
    fn.scrapesRefused.inc({ status: "403" });
    fn.policyInfo.set({ id: "sha256:abc", mode: "enforce" }, 1);
    for (const [prefix, registry] of [
      ["podnet_node_runner_", runner.registry],
      ["podnet_function_", fn.registry],
    ] as const) {
      const r = promtool(["check", "metrics"], await registry.metrics());
      // prom-client names these gauges, which count handles, requests and resources, with _total.
      const problems = r.output
        .split("\n")
        .filter(
          (line) =>
            line.trim() !== "" && !/^\S+nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/.test(line),
        );
      assert.deepEqual(problems, [], `${prefix}: ${r.output}`);
      assert.equal(r.output.split("\n").filter((line) => line.startsWith(`${prefix}nodejs_active_`)).length, 3, r.output);
    }
  });
});
