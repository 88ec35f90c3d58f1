// `npm run cluster:up` as a user runs it: progress lines with timestamps, a ready message
// naming the kubeconfig and kubectl, a demo pod intercepted across nodes, and a stop that works
// when npm itself is signalled (the script execs node, so npm's signal reaches it) and leaves
// nothing behind, the kubeconfig with its admin token included.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { hostNetworkState } from "../controlplane/cluster.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { missingRealNodeReason } from "../support/real-node-stack.ts";

const missing = missingRealNodeReason();
const root = path.resolve(import.meta.dirname, "../..");

describe("npm run cluster:up [needs root, control plane, node binaries, istiod and images]", skipUnlessCI(missing), () => {
  test("starts with timestamped progress, serves kubectl logs of the demo, and stops on SIGINT to npm, leaving nothing", async () => {
    assertAvailable(missing);
    const hostBefore = hostNetworkState();
    // Its own process group: whatever happens, the finally below stops npm and the cluster it runs.
    const npm = spawn("npm", ["run", "--silent", "cluster:up", "--", "--nodes", "2"], { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true });
    let out = "";
    npm.stdout.on("data", (c: Buffer) => (out += c.toString()));
    npm.stderr.on("data", (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((resolve) => npm.once("exit", resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`not ready after 240 s:\n${out}`));
        }, 240_000);
        const check = (): void => {
          // The ready line, and the block it prints after it (whose last line says how to stop).
          if (/cluster:up \S+ \+[\d.]+s ready/.test(out) && /\n {2}stop: Ctrl-C/.test(out)) {
            clearTimeout(timer);
            resolve();
          }
        };
        npm.stdout.on("data", check);
        void exited.then(() => {
          reject(new Error(`exited before it was ready:\n${out}`));
        });
      });
      const progress = out.split("\n").filter((l) => /^cluster:up \d\d:\d\d:\d\d \+[\d.]+s /.test(l));
      assert.ok(progress.length >= 5, `timestamped progress:\n${out}`);
      const kubeconfig = /kubeconfig (\S+)\)/.exec(out)?.[1] ?? "";
      assert.ok(existsSync(kubeconfig), `the kubeconfig it names exists: ${kubeconfig}`);
      assert.ok(!kubeconfig.startsWith(root), "outside the work tree");
      const kubectl = /kubectl: (\S+) --kubeconfig/.exec(out)?.[1] ?? "";
      // The demo client, on the other node, is answered by the mesh pod's proxy.
      let logs = "";
      for (let i = 0; i < 50 && !logs.includes("answer inbound 15006"); i++) {
        logs = execFileSync(kubectl, ["--kubeconfig", kubeconfig, "logs", "-n", "demo", "client"], { encoding: "utf8" });
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(logs, /answer inbound 15006/);

      npm.kill("SIGINT");
      assert.equal(await exited, 0, out);
      assert.match(out, /SIGINT: stopping/);
      assert.equal(existsSync(kubeconfig), false, "the kubeconfig is removed");
      assert.equal(execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).includes("pncc-"), false, "no namespace left");
      assert.equal(hostNetworkState(), hostBefore);
    } finally {
      if (npm.exitCode === null && npm.pid !== undefined) {
        // SIGINT to the group: the cluster removes what it made; SIGKILL if it does not end.
        process.kill(-npm.pid, "SIGINT");
        const timer = setTimeout(() => {
          if (npm.pid !== undefined) process.kill(-npm.pid, "SIGKILL");
        }, 60_000);
        await exited;
        clearTimeout(timer);
      }
    }
  });
});
