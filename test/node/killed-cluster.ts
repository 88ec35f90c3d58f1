// A run that is killed: starts a cluster of one node, prints "ready", then waits to be killed
// with SIGKILL (test/node/cluster.test.ts checks that the next start cleans up).
import { startCluster } from "../controlplane/cluster.ts";

const cluster = await startCluster({ nodes: 1 });
console.log(`ready ${cluster.dir} ${cluster.nodes[0]?.dir ?? ""} ${cluster.cp.dir}`);
await new Promise(() => undefined);
