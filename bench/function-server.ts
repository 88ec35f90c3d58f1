// bench:function's servers, each in its own process as in a cluster (the load generator, like
// the ApiServerSource adapter, is another process): `function` — the decision function with its
// signing key (PRIVATE_KEY_PEM) dispatching to the node-runner stand-in at RUNNER_PORT, the API
// server's pod reads answered from memory; `floor` — a bare express 5 answering the same requests;
// `floor-json` — the same, parsing each body as JSON (the least any handler of a pod event does).
// Prints its port; on a line on stdin, waits until its dispatch queue is empty and says so.
import { createPrivateKey } from "node:crypto";
import http from "node:http";
import express from "express";
import { pino } from "pino";
import { Dispatcher } from "../functions/dispatch.ts";
import { createFunctionMetrics } from "../functions/metrics.ts";
import { parsePod } from "../functions/pod.ts";
import { parsePolicy } from "../functions/policy.ts";
import { createFunctionApp } from "../functions/server.ts";
import { benchPod } from "./function-pods.ts";

const mode = process.argv[2];
let app: http.RequestListener;
let whenIdle = (): Promise<void> => Promise.resolve();
if (mode === "function") {
  const privateKey = createPrivateKey(process.env.PRIVATE_KEY_PEM ?? "");
  const dispatcher = new Dispatcher({
    signingKey: () => ({ keyid: "fn-1", privateKey }),
    port: Number(process.env.RUNNER_PORT),
    addressFor: () => "127.0.0.1",
  });
  const policy = parsePolicy("");
  const functionApp = createFunctionApp({
    policy: () => policy,
    dispatcher,
    cluster: {
      getPod: (_namespace, name) => Promise.resolve(parsePod(benchPod(name))),
      getNamespace: () => Promise.resolve(undefined),
      listPods: async function* () {},
      recordPodWarning: () => Promise.resolve(),
    },
    log: pino({ level: "silent" }),
    metrics: createFunctionMetrics({ defaultMetrics: false }),
  });
  whenIdle = () => functionApp.queue.whenIdle();
  app = functionApp;
} else if (mode === "floor" || mode === "floor-json") {
  // Express 5 reading the body (and, for floor-json, parsing it) and answering as the function does (200, no body), nothing else.
  const parse = mode === "floor-json";
  const bare = express();
  bare.post("/", express.raw({ type: () => true, limit: 1024 * 1024 }), (req, res) => {
    if (parse && Buffer.isBuffer(req.body)) JSON.parse(req.body.toString("utf8"));
    res.status(200).end();
  });
  app = bare;
} else {
  throw new Error("usage: function-server.ts function|floor|floor-json");
}
const server = http.createServer({ keepAlive: true }, app);
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  console.log(JSON.stringify({ port: address.port }));
});
process.stdin.on("data", () => {
  void whenIdle().then(() => {
    console.log(JSON.stringify({ idle: true }));
  });
});
