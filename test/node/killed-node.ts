// A run that is killed: starts the control plane and a node, prints "ready", then waits to be
// killed with SIGKILL (test/node/real-node.test.ts checks that the next start cleans up).
import { startControlPlane } from "../controlplane/harness.ts";
import { startNode } from "../controlplane/node.ts";

const cp = await startControlPlane();
const node = await startNode(cp);
console.log(`ready ${node.dir} ${cp.dir}`);
await new Promise(() => undefined);
