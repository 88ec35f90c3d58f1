// A node-runner for bench:function, in its own process: the real HTTP side (signature, digest,
// authority, replay), with the pod lookup, netns and apply answered from memory (bench:apply
// measures those). Reads the function's public key (PEM) from PUBLIC_KEY_PEM; prints its port.
import { createPublicKey } from "node:crypto";
import http from "node:http";
import { pino } from "pino";
import { createMetrics } from "../node-runner/metrics.ts";
import { ReplayCache } from "../node-runner/replay.ts";
import { createNodeRunnerApp } from "../node-runner/server.ts";
import { inMemoryNode } from "./in-memory-node.ts";

const authorities = new Set<string>();
const app = createNodeRunnerApp({
  nodeName: "node-a",
  authorities,
  startedAtMs: Date.now() - 5000,
  keys: { current: new Map([["fn-1", createPublicKey(process.env.PUBLIC_KEY_PEM ?? "")]]) },
  replay: new ReplayCache(1_000_000),
  pods: {
    // Every pod exists, on this node, with the UID the request names.
    identify: () => Promise.resolve({ kind: "found", terminating: false }),
    markInitialized: () => Promise.resolve(),
    markRefused: () => Promise.resolve(),
    markSkipped: () => Promise.resolve(),
    recordEvent: () => Promise.resolve(),
  },
  ...inMemoryNode(),
  log: pino({ level: "silent" }),
  metrics: createMetrics({ defaultMetrics: false }),
});
let verified = 0;
const server = http.createServer({ keepAlive: true }, (req, res) => {
  res.on("finish", () => {
    if (res.statusCode === 200) verified++;
  });
  app(req, res);
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  authorities.add(`127.0.0.1:${address.port}`);
  console.log(JSON.stringify({ port: address.port }));
});
// The parent asks how many requests were verified and answered 200.
process.stdin.on("data", () => {
  console.log(JSON.stringify({ verified }));
});
