// A byte relay between network namespaces: `node relay.mjs <listen> <connect>`, each either
// tcp:HOST:PORT or unix:PATH. Unix sockets live in the filesystem, which every network
// namespace shares, so a pair of relays — one in the host's namespace, one in the cluster's —
// lets the tests and a user's kubectl reach the cluster's API server without giving the host
// an address or a route. Plain JavaScript: it starts in a few milliseconds, without tsx.
import net from "node:net";
import { rmSync } from "node:fs";

const parse = (spec) => {
  const [kind, ...rest] = spec.split(":");
  if (kind === "unix") return { path: rest.join(":") };
  if (kind === "tcp") {
    const port = Number(rest.pop());
    return { host: rest.join(":").replace(/^\[|\]$/g, ""), port };
  }
  throw new Error(`not tcp:HOST:PORT or unix:PATH: ${spec}`);
};
const [listenSpec, connectSpec] = process.argv.slice(2);
if (listenSpec === undefined || connectSpec === undefined) {
  console.error("usage: relay.mjs <listen> <connect>  (tcp:HOST:PORT or unix:PATH)");
  process.exit(64);
}
const listen = parse(listenSpec);
const target = parse(connectSpec);
if (listen.path !== undefined) rmSync(listen.path, { force: true });

const server = net.createServer((inbound) => {
  const outbound = net.connect(target);
  inbound.pipe(outbound).pipe(inbound);
  const close = () => {
    inbound.destroy();
    outbound.destroy();
  };
  inbound.on("error", close);
  outbound.on("error", close);
  inbound.on("close", close);
  outbound.on("close", close);
});
server.on("error", (err) => {
  console.error(`relay ${listenSpec}: ${err.message}`);
  process.exit(1);
});
server.listen(listen, () => {
  console.log(`relay ${listenSpec} -> ${connectSpec}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
