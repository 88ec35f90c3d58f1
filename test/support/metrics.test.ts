import assert from "node:assert/strict";
import { test } from "node:test";
import { metricSeries, metricSum } from "./metrics.ts";

test("metricSum: every label set of the one metric, floats included; a longer name with the same start is another metric", () => {
  const page = [
    "# HELP podnet_x_total X.",
    'podnet_x_total{type="a",outcome="handled"} 3',
    'podnet_x_total{type="b",outcome="handled"} 4',
    "podnet_x_total_created 1795696987",
    "podnet_d_seconds_sum 0.25",
    'podnet_d_seconds_sum{le="x"} 1.5e-1',
  ].join("\n");
  assert.equal(metricSum(page, "podnet_x_total"), 7);
  assert.equal(metricSum(page, "podnet_d_seconds_sum"), 0.4);
  assert.equal(metricSum(page, "podnet_missing_total"), 0);
  assert.equal(metricSum(page, "podnet_x_total{"), 0); // a name, not a pattern
});

test("metricSeries: each series with its labels (escaped quotes kept as written) and value", () => {
  const page = [
    'api_total{verb="GET",resource="pods",code="200"} 12',
    'api_total{verb="POST",resource="events",subresource="",msg="a \\"b\\""} 3',
    "api_total 1",
    "api_total_other 9",
  ].join("\n");
  assert.deepEqual(metricSeries(page, "api_total"), [
    { labels: { verb: "GET", resource: "pods", code: "200" }, value: 12 },
    { labels: { verb: "POST", resource: "events", subresource: "", msg: 'a \\"b\\"' }, value: 3 },
    { labels: {}, value: 1 },
  ]);
});
