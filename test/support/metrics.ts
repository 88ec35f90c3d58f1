// Reading a component's Prometheus metrics, as a scraper would: the tests and benchmarks that
// count what a component did (the function over HTTP, the node-runner and the API server over
// HTTPS with their CA, the API server with a bearer token).
import http from "node:http";
import https from "node:https";

/** A component's metrics page (`<url>/metrics`); `tls` for an HTTPS server the system CAs do not know. */
export function scrapeMetrics(url: string, tls: { ca?: Buffer; servername?: string; token?: string } = {}): Promise<string> {
  const target = new URL("/metrics", url);
  const options = { ca: tls.ca, servername: tls.servername, headers: tls.token === undefined ? {} : { authorization: `Bearer ${tls.token}` } };
  return new Promise((resolve, reject) => {
    const answer = (res: http.IncomingMessage): void => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => {
        if (res.statusCode === 200) resolve(text);
        else reject(new Error(`${target.href}: HTTP ${res.statusCode ?? "?"}`));
      });
    };
    (target.protocol === "https:" ? https.get(target, options, answer) : http.get(target, { headers: options.headers }, answer)).on("error", reject);
  });
}

/** Every series of one metric in a metrics page: its labels and value. */
export function metricSeries(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return [...text.matchAll(new RegExp(`^${escaped}(?:\\{([^}]*)\\})? (\\S+)$`, "gm"))].map((m) => ({
    labels: Object.fromEntries([...(m[1] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1] ?? "", l[2] ?? ""])),
    value: Number(m[2]),
  }));
}

/** The sum of one metric's series, every label set, in a metrics page (0 when it has none). */
export function metricSum(text: string, name: string): number {
  return metricSeries(text, name).reduce((sum, s) => sum + s.value, 0);
}
