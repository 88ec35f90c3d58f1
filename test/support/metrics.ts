// Reading a component's Prometheus metrics, as a scraper would: the tests and benchmarks that
// count what a component did.

/** A component's metrics page (`<url>/metrics`, plain HTTP). */
export async function scrapeMetrics(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

/** The sum of one metric's series, every label set, in a metrics page (0 when it has none). */
export function metricSum(text: string, name: string): number {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return [...text.matchAll(new RegExp(`^${escaped}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))].reduce((sum, m) => sum + Number(m[1]), 0);
}
