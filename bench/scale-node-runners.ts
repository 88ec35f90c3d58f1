// The node-runners of bench:scale's simulated nodes, in one process: for each node (reached at
// its own loopback address, 127.1.x.y, on one port) the node-runner's real HTTP side — TLS with
// the runners' certificate, signature, authority, digest, replay, the request's schema, the
// node's name — and its real mark, a merge patch on the real API server. The identity check, the
// netns and the apply answer from memory: the node side is measured on real nodes (bench:node,
// bench:apply). Each pod's rules digest is recorded, to show that no pod was programmed twice
// with different rules.
//
//   env: NODES_FILE (JSON [{name, ip}]), PUBLIC_KEYS_DIR, API_SERVER, API_CA_FILE, API_TOKEN,
//        TLS_CERT_FILE, TLS_KEY_FILE, RECORD_FILE (written on a line on stdin)
// Prints {"port": N}; answers each line on stdin with the totals, and "record" with the record
// (uid, first mark in epoch ms, rules digests) written to RECORD_FILE first.
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import path from "node:path";
import { createInterface } from "node:readline";
import type express from "express";
import { pino } from "pino";
import { KubePodApi } from "../node-runner/kube.ts";
import { createMetrics } from "../node-runner/metrics.ts";
import { ReplayCache } from "../node-runner/replay.ts";
import { createNodeRunnerApp } from "../node-runner/server.ts";
import { inMemoryNode } from "./in-memory-node.ts";

const env = process.env;
const nodes = JSON.parse(readFileSync(env.NODES_FILE ?? "", "utf8")) as { name: string; ip: string }[];
const nodeAt = new Map(nodes.map((n) => [n.ip, n.name]));
const keysDir = env.PUBLIC_KEYS_DIR ?? "";
const keys = new Map<string, KeyObject>(
  readdirSync(keysDir)
    .filter((f) => f.endsWith(".pem"))
    .map((f) => [path.basename(f, ".pem"), createPublicKey(readFileSync(path.join(keysDir, f)))]),
);
const conn = { server: new URL(env.API_SERVER ?? ""), ca: readFileSync(env.API_CA_FILE ?? ""), token: () => env.API_TOKEN ?? "" };
const log = pino({ level: "silent" });
const metrics = createMetrics({ defaultMetrics: false });

/** uid → [first mark (epoch ms), the rules digests it was marked with]. */
const programmed = new Map<string, { at: number; rules: Set<string> }>();
let marks = 0;
let port = 0;

const apps = new Map<string, express.Express>();
function appFor(ip: string): express.Express | undefined {
  const nodeName = nodeAt.get(ip);
  if (nodeName === undefined) return undefined;
  let app = apps.get(nodeName);
  if (app !== undefined) return app;
  const api = new KubePodApi(conn, nodeName);
  app = createNodeRunnerApp({
    nodeName,
    authorities: new Set([`${ip}:${port}`]),
    startedAtMs: Date.now() - 5000,
    keys: { current: keys },
    replay: new ReplayCache(100_000),
    pods: {
      identify: () => Promise.resolve({ kind: "found", terminating: false }),
      markInitialized: async (pod, mark) => {
        const seen = programmed.get(pod.uid) ?? { at: Date.now(), rules: new Set<string>() };
        seen.rules.add(mark.rules);
        programmed.set(pod.uid, seen);
        marks++;
        await api.markInitialized(pod, mark);
      },
      markRefused: (pod, reason) => api.markRefused(pod, reason),
      markSkipped: (pod, reason) => api.markSkipped(pod, reason),
      recordEvent: () => Promise.resolve(),
    },
    // The digest of what was asked for: the same rules give the same digest.
    ...inMemoryNode((config) => createHash("sha256").update(JSON.stringify(config)).digest("hex").slice(0, 16)),
    log,
    metrics,
  });
  apps.set(nodeName, app);
  return app;
}

const server = https.createServer({ cert: readFileSync(env.TLS_CERT_FILE ?? ""), key: readFileSync(env.TLS_KEY_FILE ?? ""), keepAlive: true }, (req, res) => {
  const app = appFor(req.socket.localAddress ?? "");
  if (app === undefined) {
    res.writeHead(421).end();
    return;
  }
  app(req, res);
});
server.listen(0, "0.0.0.0", () => {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  port = address.port;
  console.log(JSON.stringify({ port }));
});
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "record")
    writeFileSync(env.RECORD_FILE ?? "", [...programmed].map(([uid, p]) => JSON.stringify({ uid, at: p.at, rules: [...p.rules] })).join("\n"));
  const conflicting = [...programmed.values()].filter((p) => p.rules.size > 1).length;
  console.log(JSON.stringify({ marks, pods: programmed.size, conflicting }));
});
