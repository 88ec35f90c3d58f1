// Stands in for Envoy in the istio-proxy container of real-node tests (no registry here, so
// Istio's proxyv2 image cannot be pulled). It listens where Envoy would (15001 outbound, 15006
// inbound, 15021 readiness) and records each connection the rules redirect to it: the peer
// writes one line naming where it meant to go, and the recorder answers with the port it
// arrived on. It proves interception, not Envoy's behaviour.
import http from "node:http";
import net from "node:net";

for (const [port, direction] of [
  [15001, "outbound"],
  [15006, "inbound"],
]) {
  net
    .createServer((socket) => {
      socket.once("data", (line) => {
        console.log(JSON.stringify({ direction, port, from: `${socket.remoteAddress}:${socket.remotePort}`, meant: line.toString().trim() }));
        socket.end(`${direction} ${port}\n`);
      });
      socket.on("error", () => undefined);
    })
    .listen(port, "::");
}
http
  .createServer((_req, res) => {
    // Ready at once, whatever path the injected probes use.
    res.writeHead(200).end();
  })
  .listen(15021, "::");
console.log(JSON.stringify({ listening: [15001, 15006, 15021] }));
// PID 1 of its container: without a handler SIGTERM is ignored and the kubelet waits out the
// grace period (30 s) before it can re-create a sandbox.
process.on("SIGTERM", () => process.exit(0));
