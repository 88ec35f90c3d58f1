// The real node of test/controlplane/node.ts: kubelet, containerd and the CNI bridge start
// against the harness's API server, run a pod, and leave nothing behind when stopped. Later
// tests on the real node rely on exactly these facts (the pod cgroup where the node-runner looks
// for it, the pod's own netns, the node's IP).
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { missingBinariesReason, reapStaleRuns, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { missingNodeReason, PAUSE_IMAGE, POD_SUBNET, reapStaleNodes, startNode, type RealNode } from "../controlplane/node.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { pidsWhere } from "../support/processes.ts";

const missing = missingBinariesReason() ?? missingNodeReason();
const SYSCTLS = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward"];
const readSysctls = () => Object.fromEntries(SYSCTLS.map((k) => [k, readFileSync(`/proc/sys/${k}`, "utf8").trim()]));
const FOREIGN = ["/var/lib/kubelet", "/var/log/containers", "/run/containerd", "/var/lib/cni", "/etc/cni"];

describe("real node [needs root, control plane and node binaries]", skipUnlessCI(missing), () => {
  let cp: ControlPlane | undefined;
  let node: RealNode | undefined;
  let core: k8s.CoreV1Api;
  const sysctlsBefore = missing === undefined ? readSysctls() : {};
  const foreignBefore = FOREIGN.filter((p) => existsSync(p));

  before(async () => {
    if (missing !== undefined) return;
    cp = await startControlPlane();
    const t0 = performance.now();
    node = await startNode(cp, {
      log: (line) => {
        console.log(`node: ${line}`);
      },
    });
    console.log(`node: warm start to Ready in ${Math.round(performance.now() - t0)} ms`);
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  });
  after(async () => {
    await node?.stop();
    await cp?.stop();
  });

  test("a pod is scheduled, gets an IP from the bridge, runs in the kubelet's pod cgroup and its own netns", async () => {
    assertAvailable(missing);
    assert.ok(node !== undefined);
    await core.createNamespacedPod({
      namespace: "default",
      body: {
        metadata: { name: "plain" },
        spec: { automountServiceAccountToken: false, containers: [{ name: "app", image: PAUSE_IMAGE, imagePullPolicy: "Never" }] },
      },
    });
    const t0 = performance.now();
    let pod: k8s.V1Pod | undefined;
    for (let i = 0; i < 300 && pod?.status?.phase !== "Running"; i++) {
      await new Promise((r) => setTimeout(r, 100));
      pod = await core.readNamespacedPod({ namespace: "default", name: "plain" });
    }
    console.log(`node: pod create → Running in ${Math.round(performance.now() - t0)} ms`);
    assert.equal(pod?.status?.phase, "Running");
    assert.equal(pod.spec?.nodeName, node.name);
    assert.equal(pod.status.hostIP, node.ip);
    const ip = pod.status.podIP ?? "";
    assert.ok(ip.startsWith(POD_SUBNET.split(".").slice(0, 3).join(".")), `pod IP ${ip} from ${POD_SUBNET}`);

    // The kubelet's cgroupfs layout: kubepods/<qos>/pod<uid>/<container>, in every v1 hierarchy.
    const uid = pod.metadata?.uid ?? "";
    const podCgroup = `/sys/fs/cgroup/pids/kubepods/besteffort/pod${uid}`;
    assert.ok(existsSync(podCgroup), `${podCgroup} exists`);
    const pids = readdirSync(podCgroup, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .flatMap((d) =>
        readFileSync(`${podCgroup}/${d.name}/cgroup.procs`, "utf8")
          .split("\n")
          .filter((l) => l !== ""),
      );
    assert.ok(pids.length >= 2, "the sandbox and the app container each have a process");
    const netns = new Set(pids.map((pid) => readlinkSync(`/proc/${pid}/ns/net`)));
    assert.equal(netns.size, 1, "all of the pod's processes share one netns");
    assert.notEqual([...netns][0], readlinkSync("/proc/self/ns/net"), "and it is not the host's");

    // Nothing can leave the machine: the pod has no default route, the host forwards nothing.
    const routes = execFileSync("nsenter", [`--net=/proc/${pids[0] ?? 0}/ns/net`, "ip", "route"], { encoding: "utf8" });
    assert.doesNotMatch(routes, /default/, routes);
    assert.equal(readSysctls()["net/ipv4/ip_forward"], sysctlsBefore["net/ipv4/ip_forward"]);
  });

  test("stop leaves nothing: processes, mounts, cgroups, links, paths and sysctls as before", async () => {
    assertAvailable(missing);
    assert.ok(node !== undefined);
    const dir = node.dir;
    await node.stop();
    assert.equal(existsSync(dir), false);
    assert.equal(readFileSync("/proc/self/mountinfo", "utf8").includes(dir), false, "no mount under the node's directory");
    for (const controller of ["pids", "memory", "cpu"])
      assert.equal(existsSync(`/sys/fs/cgroup/${controller}/kubepods`), false, `no ${controller} kubepods cgroup`);
    assert.deepEqual(readSysctls(), sysctlsBefore);
    assert.deepEqual(
      FOREIGN.filter((p) => existsSync(p)),
      foreignBefore,
    );
    const links = readdirSync("/sys/class/net");
    assert.ok(!links.includes("pnc0"), `links left: ${links.join(" ")}`);
    const ours = pidsWhere((cmdline) => cmdline.includes(dir));
    assert.deepEqual(ours, [], "no process of the node is left");
  });

  test("a run killed with SIGKILL is cleaned up by the next start", async () => {
    assertAvailable(missing);
    const child = spawn(process.execPath, ["--import", "tsx", path.join(import.meta.dirname, "killed-node.ts")], { stdio: ["ignore", "pipe", "inherit"] });
    const ready = await new Promise<string>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (c: Buffer) => {
        out += c.toString();
        const line = /ready (\S+) (\S+)/.exec(out);
        if (line !== null) resolve(line[1] ?? "");
      });
      child.once("exit", (code) => {
        reject(new Error(`the run exited (${String(code)}) before it was ready: ${out}`));
      });
    });
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    assert.ok(existsSync(ready), "the killed run left its node behind");
    assert.ok(reapStaleNodes() >= 1);
    reapStaleRuns();
    assert.equal(existsSync(ready), false);
    for (const controller of ["pids", "memory", "cpu"])
      assert.equal(existsSync(`/sys/fs/cgroup/${controller}/kubepods`), false, `no ${controller} kubepods cgroup`);
    assert.deepEqual(readSysctls(), sysctlsBefore);
    assert.deepEqual(
      FOREIGN.filter((p) => existsSync(p)),
      foreignBefore,
    );
    assert.ok(!readdirSync("/sys/class/net").includes("pnc0"));
  });
});
