// The test cluster of test/controlplane/cluster.ts: two real nodes, each in its own network
// namespace with its own containerd, kubelet (own cgroup root, node IP, pod subnet) and
// kube-proxy; the API server in the fabric between them; CoreDNS. Later tests on the cluster
// rely on exactly these facts: pods on both nodes reach each other, Services and cluster names
// work from every pod, the API server reaches kubelets (logs), and the host's own network, its
// sysctls and paths are as before, while it runs and after it stops or is killed.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { hostNetworkState, reapStaleClusters, startCluster, type Cluster } from "../controlplane/cluster.ts";
import { BIN, missingBinariesReason, waitFor } from "../controlplane/harness.ts";
import { missingNodeReason, NODE_PRIVATE_DIRS, PAUSE_IMAGE } from "../controlplane/node.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { pidsWhere } from "../support/processes.ts";
import { podPids } from "../support/real-node-stack.ts";

const missing = missingBinariesReason() ?? missingNodeReason();
const SYSCTLS = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward"];
const readSysctls = () => Object.fromEntries(SYSCTLS.map((k) => [k, readFileSync(`/proc/sys/${k}`, "utf8").trim()]));
const netnsList = (): string[] =>
  execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith("pncc-"));

/** Node's own script, run by `node -e` inside a pod's network namespace; prints one line. */
function inPodNetns(pid: number, script: string): string {
  return execFileSync("nsenter", [`--net=/proc/${pid}/ns/net`, "--", process.execPath, "-e", script], { encoding: "utf8", timeout: 15_000 }).trim();
}

describe("test cluster [needs root, control plane and node binaries]", skipUnlessCI(missing), () => {
  let cluster: Cluster | undefined;
  let core: k8s.CoreV1Api;
  const sysctlsBefore = missing === undefined ? readSysctls() : {};
  const privateBefore = NODE_PRIVATE_DIRS.filter((p) => existsSync(p));
  const hostBefore = missing === undefined ? hostNetworkState() : "";
  before(async () => {
    if (missing !== undefined) return;
    const t0 = performance.now();
    cluster = await startCluster({
      nodes: 2,
      log: (line) => {
        console.log(`cluster: ${line}`);
      },
    });
    console.log(`cluster: warm start of 2 nodes and DNS in ${Math.round(performance.now() - t0)} ms`);
    core = cluster.cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  });
  after(async () => {
    await cluster?.stop();
  });

  const runPod = async (name: string, nodeName: string): Promise<k8s.V1Pod> => {
    await core.createNamespacedPod({
      namespace: "default",
      body: {
        metadata: { name },
        spec: {
          nodeSelector: { "kubernetes.io/hostname": nodeName },
          automountServiceAccountToken: false,
          containers: [{ name: "app", image: PAUSE_IMAGE, imagePullPolicy: "Never" }],
        },
      },
    });
    let pod: k8s.V1Pod | undefined;
    await waitFor(`pod ${name} Running`, 60_000, async () => {
      pod = await core.readNamespacedPod({ namespace: "default", name });
      return pod.status?.phase === "Running";
    });
    return pod as k8s.V1Pod;
  };

  test("every node is Ready with its own IP, pod subnet and cgroup root; pods run in their node's subnet, cgroup and a netns of their own", async () => {
    assertAvailable(missing);
    assert.ok(cluster !== undefined);
    const nodes = cluster.nodes;
    assert.equal(nodes.length, 2);
    assert.equal(new Set(nodes.map((n) => n.ip)).size, 2);
    for (const node of nodes) {
      const api = await core.readNode({ name: node.name });
      assert.deepEqual(
        api.status?.addresses?.filter((a) => a.type === "InternalIP").map((a) => a.address),
        [node.ip],
      );
      const pod = await runPod(`plain-${node.name}`, node.name);
      assert.equal(pod.status?.hostIP, node.ip);
      assert.ok((pod.status.podIP ?? "").startsWith(node.podSubnet.split(".").slice(0, 3).join(".")), `${pod.status.podIP ?? ""} from ${node.podSubnet}`);
      const pids = podPids(pod);
      assert.ok(pids.length >= 1);
      const netns = new Set(pids.map((pid) => readlinkSync(`/proc/${pid}/ns/net`)));
      assert.equal(netns.size, 1);
      assert.notEqual([...netns][0], readlinkSync("/proc/self/ns/net"));
      assert.ok(existsSync(`/sys/fs/cgroup/pids${node.cgroupRoot}/kubepods`), `the kubelet's pods under ${node.cgroupRoot}`);
    }
  });

  test("pods on different nodes reach each other; Services and cluster names work from every pod; kubectl logs reaches the kubelets", async () => {
    assertAvailable(missing);
    assert.ok(cluster !== undefined);
    const [a, b] = await Promise.all(cluster.nodes.map((n) => core.readNamespacedPod({ namespace: "default", name: `plain-${n.name}` })));
    assert.ok(a !== undefined && b !== undefined);
    const [pidA, pidB] = [podPids(a)[0] ?? 0, podPids(b)[0] ?? 0];
    // A listener inside pod b's netns; pod a connects to it across the fabric.
    const listener = spawn(
      "nsenter",
      [
        `--net=/proc/${pidB}/ns/net`,
        "--",
        process.execPath,
        "-e",
        `require("net").createServer((s) => s.end("from b\\n")).listen(7000, () => console.log("up"))`,
      ],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    try {
      await new Promise<void>((resolve) =>
        listener.stdout.once("data", () => {
          resolve();
        }),
      );
      const answer = inPodNetns(
        pidA,
        `require("net").connect(7000, ${JSON.stringify(b.status?.podIP)}).on("data", (d) => { console.log(String(d).trim()); process.exit(0); }).on("error", (e) => { console.log(e.code); process.exit(1); })`,
      );
      assert.equal(answer, "from b");
    } finally {
      listener.kill();
    }
    // The kubernetes Service (kube-proxy, nftables) and its name (CoreDNS), from a pod on each node.
    for (const pid of [pidA, pidB]) {
      const resolved = inPodNetns(
        pid,
        `const r = new (require("dns").promises.Resolver)(); r.setServers([${JSON.stringify(cluster.network.dnsServiceIp)}]); r.resolve4("kubernetes.default.svc.cluster.local").then((a) => console.log(a.join(",")), (e) => console.log(e.code))`,
      );
      assert.equal(resolved, "10.96.0.1");
      const status = inPodNetns(
        pid,
        `require("https").get({ host: "10.96.0.1", path: "/readyz", rejectUnauthorized: false }, (r) => { console.log(r.statusCode); process.exit(0); }).on("error", (e) => console.log(e.code))`,
      );
      assert.match(status, /^(200|401|403)$/, "the API server answered through the Service");
    }
    // The API server reaches a kubelet by its InternalIP (logs, exec, port-forward).
    const corednsPod = (await core.listNamespacedPod({ namespace: "kube-system", labelSelector: "k8s-app=kube-dns" })).items[0];
    const logs = await core.readNamespacedPodLog({ namespace: "kube-system", name: corednsPod?.metadata?.name ?? "" });
    assert.match(logs, /CoreDNS/);
  });

  test("kubectl works against it as a user meets it: version (a stamped API server) and logs", () => {
    assertAvailable(missing);
    assert.ok(cluster !== undefined);
    const kubeconfig = cluster.cp.writeKubeconfig("user", cluster.cp.adminToken);
    const kubectl = (...args: string[]): string => execFileSync(BIN.kubectl, ["--kubeconfig", kubeconfig, ...args], { encoding: "utf8" });
    const version = JSON.parse(kubectl("version", "-o", "json")) as { serverVersion?: { gitVersion?: string }; clientVersion?: { gitVersion?: string } };
    assert.match(version.serverVersion?.gitVersion ?? "", /^v1\.\d+\.\d+$/);
    assert.equal(version.serverVersion?.gitVersion, version.clientVersion?.gitVersion, "the API server and the node binaries are one Kubernetes version");
    assert.match(kubectl("logs", "-n", "kube-system", "deployment/coredns"), /CoreDNS/);
  });

  test("nothing leaves the machine and the host's network is untouched while the cluster runs", () => {
    assertAvailable(missing);
    assert.ok(cluster !== undefined);
    const fabricRoutes = execFileSync("ip", ["-n", cluster.network.fabricNetns, "route"], { encoding: "utf8" });
    assert.doesNotMatch(fabricRoutes, /default/, fabricRoutes);
    assert.equal(hostNetworkState(), hostBefore);
    assert.deepEqual(readSysctls()["net/ipv4/ip_forward"], sysctlsBefore["net/ipv4/ip_forward"]);
  });

  test("stop leaves nothing: processes, namespaces, mounts, cgroups, paths, sysctls and the host's network as before", async () => {
    assertAvailable(missing);
    assert.ok(cluster !== undefined);
    const dirs = [cluster.dir, cluster.cp.dir, ...cluster.nodes.map((n) => n.dir)];
    const cgroupRoots = cluster.nodes.map((n) => n.cgroupRoot);
    await cluster.stop();
    for (const dir of dirs) {
      assert.equal(existsSync(dir), false, `${dir} removed`);
      assert.equal(readFileSync("/proc/self/mountinfo", "utf8").includes(dir), false, `no mount under ${dir}`);
      assert.deepEqual(
        pidsWhere((cmdline) => cmdline.includes(dir)),
        [],
        `no process of ${dir}`,
      );
    }
    for (const root of cgroupRoots) for (const controller of ["pids", "memory", "cpu"]) assert.equal(existsSync(`/sys/fs/cgroup/${controller}${root}`), false);
    assert.deepEqual(netnsList(), []);
    assert.deepEqual(readSysctls(), sysctlsBefore);
    assert.deepEqual(
      NODE_PRIVATE_DIRS.filter((p) => existsSync(p)),
      privateBefore,
    );
    assert.equal(hostNetworkState(), hostBefore);
  });

  test("a bad size or family is refused in one line before anything is made", async () => {
    assertAvailable(missing);
    await assert.rejects(startCluster({ nodes: 0 }), /^Error: --nodes 0: between 1 and 8 nodes$/);
    await assert.rejects(startCluster({ nodes: 2, family: "ipv5" as "ipv4" }), /^Error: --family ipv5: ipv4, dual or ipv6$/);
    assert.deepEqual(netnsList(), []);
    assert.equal(hostNetworkState(), hostBefore);
  });

  test("a run killed with SIGKILL is cleaned up by the next start; a second cluster is refused while one runs", async () => {
    assertAvailable(missing);
    const child = spawn(process.execPath, ["--import", "tsx", path.join(import.meta.dirname, "killed-cluster.ts")], { stdio: ["ignore", "pipe", "inherit"] });
    const dirs = await new Promise<string[]>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (c: Buffer) => {
        out += c.toString();
        const line = /ready (\S+) (\S+) (\S+)/.exec(out);
        if (line !== null) resolve(line.slice(1));
      });
      child.once("exit", (code) => {
        reject(new Error(`the run exited (${String(code)}) before it was ready: ${out}`));
      });
    });
    await assert.rejects(startCluster({ nodes: 1 }), /a cluster of process \d+ is running on this machine/);
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    for (const dir of dirs) assert.ok(existsSync(dir), "the killed run left its cluster behind");
    assert.ok(reapStaleClusters() >= 1);
    for (const dir of dirs) assert.equal(existsSync(dir), false, `${dir} reaped`);
    assert.deepEqual(netnsList(), []);
    for (const controller of ["pids", "memory", "cpu"]) assert.equal(existsSync(`/sys/fs/cgroup/${controller}/pnc-node-1`), false);
    assert.deepEqual(readSysctls(), sysctlsBefore);
    assert.equal(hostNetworkState(), hostBefore);
  });
});
