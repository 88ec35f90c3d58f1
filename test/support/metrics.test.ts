import assert from "node:assert/strict";
import { test } from "node:test";
import { metricSum } from "./metrics.ts";

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
