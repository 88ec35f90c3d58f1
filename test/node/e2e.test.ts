// End to end on a real node: the node-runner runs as the DaemonSet of config/ (its image built
// from the Dockerfile, its RBAC, hostNetwork, hostPID, capabilities, probes, mounted keys and
// TLS), the function and Knative's ApiServerSource adapter run as processes (Knative Serving is
// out of scope here), and mesh pods are pods injected by Istio's real injector with the
// project's template: their waiter is a real init container in the kubelet's netns and cgroup.
// Interception is proven by traffic between real pods on the node's bridge.
//
// Istio's proxyv2 image cannot be pulled here: the istio-proxy container runs a recorder under
// its name (test/node/proxy-recorder.mjs) that answers on Envoy's ports with the port the
// connection arrived on. The one test-only change to the DaemonSet: in-cluster configuration
// points at the API server's loopback address (there is no kube-proxy on this node).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parse as parseYaml } from "yaml";
import { MARK, STATUS_INITIALIZED } from "../../contract/mark.ts";
import { WAITER_CONTAINER } from "../../functions/decision.ts";
import { BIN, missingBinariesReason, startControlPlane, type Adapter, type ControlPlane } from "../controlplane/harness.ts";
import { IMAGE_DIR, missingNodeReason, startNode, type RealNode } from "../controlplane/node.ts";
import { FUNCTION_AUDIENCE, startFunction, type Component } from "../support/components.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { kubeInject, missingIstioReason, renderInjector, type InjectorFiles } from "../support/istio-injector.ts";

const root = path.resolve(import.meta.dirname, "../..");
const PROJECT_IMAGES = ["node-runner", "waiter", "proxy-recorder"].map((i) => path.join(IMAGE_DIR, `${i}.oci.tar`));
const missing =
  missingBinariesReason() ??
  missingNodeReason() ??
  missingIstioReason() ??
  (PROJECT_IMAGES.every((f) => existsSync(f)) ? undefined : "the project's images are not built: run test/controlplane/images.sh");
const NS = "shop";
const APP_IMAGE = "localhost/pnc/proxy-recorder:test";
/** Paths the DaemonSet's hostPath volumes create on the host (removed after when they were not there). */
const HOST_PATHS = ["/run/podnet", "/run/xtables.lock"];

/** A TCP server on :8080 that answers "app". */
const SERVER = `require("net").createServer((s) => { s.on("error", () => {}); s.once("data", () => s.end("app\\n")); }).listen(8080, "::")`;
/** Every 100 ms: connect to $TARGET:8080, say where it meant to go, print the answer. */
const CLIENT = `const net = require("net"); setInterval(() => { const s = net.connect(8080, process.env.TARGET); s.on("error", (e) => console.log("error " + e.code)); s.on("data", (d) => console.log("answer " + d.toString().trim())); s.write(process.env.TARGET + ":8080\\n"); }, 100);`;

interface PodRef {
  namespace: string;
  name: string;
  uid: string;
}

describe("end to end on a real node [needs root, control plane, node binaries, istioctl and images]", skipUnlessCI(missing), () => {
  let cp: ControlPlane | undefined;
  let node: RealNode | undefined;
  let fn: Component | undefined;
  let adapter: Adapter | undefined;
  let core: k8s.CoreV1Api;
  let injector: InjectorFiles;
  let dir: string;
  const hostPathsBefore = HOST_PATHS.filter((p) => existsSync(p));

  before(async () => {
    if (missing !== undefined) return;
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-realnode-"));
    injector = renderInjector(dir);
    cp = await startControlPlane();
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await cp.installKnativeCrds();
    node = await startNode(cp, {
      log: (line) => {
        console.log(`node: ${line}`);
      },
    });

    // Images under the names the manifests and Istio's injector use.
    const proxyImage = kubeInject(injector, meshPodSpec("probe", "server")).spec.initContainers?.find((c) => c.name === "istio-proxy")?.image ?? "";
    assert.match(proxyImage, /proxyv2/);
    for (const [archive, local, name] of [
      ["node-runner", "localhost/podnet/node-runner:test", "ghcr.io/podnet/node-runner:0.1.0"],
      ["waiter", "localhost/podnet/waiter:test", "ghcr.io/podnet/waiter:0.1.0"],
      ["proxy-recorder", APP_IMAGE, proxyImage],
    ] as const) {
      node.importImage(path.join(IMAGE_DIR, `${archive}.oci.tar`));
      node.ctr("images", "tag", "--force", local, name);
    }

    // Keys and TLS as an operator makes them (`pnc keys generate`), applied as they are written.
    const keysDir = path.join(dir, "keys");
    execFileSync(process.execPath, ["--import", "tsx", path.join(root, "cli/pnc.ts"), "keys", "generate", "--out", keysDir], { cwd: root });
    for (const f of ["public-keys.configmap.yaml", "signing-keys.secret.yaml", "node-runner-tls.secret.yaml", "node-runner-ca.configmap.yaml"]) {
      await cp.applyManifest(path.join(keysDir, f));
    }
    // The project's manifests for a Kubernetes cluster, as `kustomize build` renders them.
    const rendered = execFileSync(BIN.kustomize, ["build", path.join(root, "config/overlays/kubernetes")], { encoding: "utf8" });
    const apiPort = new URL(cp.server).port;
    const docs = k8s.loadAllYaml(rendered) as k8s.KubernetesObject[];
    for (const doc of docs) {
      if (doc.kind !== "DaemonSet") continue;
      const container = (doc as k8s.V1DaemonSet).spec?.template.spec?.containers[0];
      container?.env?.push({ name: "KUBERNETES_SERVICE_HOST", value: "127.0.0.1" }, { name: "KUBERNETES_SERVICE_PORT", value: apiPort });
    }
    await cp.applyYaml(docs.map((d) => k8s.dumpYaml(d)).join("---\n"));
    await waitUntil("the node-runner pod is Ready", 90_000, async () => {
      const pods = await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: "app.kubernetes.io/name=podnet-node-runner" });
      return pods.items.some((p) => p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"));
    });

    // The function, with the Secret's key and the CA ConfigMap's certificate, sending to each pod's hostIP.
    const signingDir = path.join(dir, "signing");
    mkdirSync(signingDir);
    const secret = parseYaml(readFileSync(path.join(keysDir, "signing-keys.secret.yaml"), "utf8")) as { stringData: Record<string, string> };
    for (const [file, pem] of Object.entries(secret.stringData)) writeFileSync(path.join(signingDir, file), pem, { mode: 0o600 });
    const caConfigMap = parseYaml(readFileSync(path.join(keysDir, "node-runner-ca.configmap.yaml"), "utf8")) as { data: { "ca.crt": string } };
    writeFileSync(path.join(dir, "node-runner-ca.crt"), caConfigMap.data["ca.crt"]);
    fn = await startFunction(cp, {
      signingKeysDir: signingDir,
      nodeRunnerPort: 19443,
      nodeRunnerCaFile: path.join(dir, "node-runner-ca.crt"),
      nodeRunnerAddress: null,
    });
    adapter = await cp.startAdapter({ sink: `${fn.url}/`, labelSelector: "security.istio.io/tlsMode=istio", audience: FUNCTION_AUDIENCE });

    await cp.ensureNamespace(NS);
    // Istio's template mounts istiod's root certificate; istiod is not here.
    await core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: "istio-ca-root-cert" }, data: { "root-cert.pem": "" } } });
  });

  after(async () => {
    if (node !== undefined && cp !== undefined) {
      const runner = await core.listNamespacedPod({ namespace: "podnet-system" }).catch(() => undefined);
      for (const p of runner?.items ?? []) console.log(`node-runner ${p.metadata?.name ?? ""}:\n${node.containerLog(ref(p), "node-runner").split("\n").slice(-15).join("\n")}`);
    }
    await adapter?.stop();
    fn?.process.kill("SIGTERM");
    await node?.stop();
    await cp?.stop();
    for (const p of HOST_PATHS) if (!hostPathsBefore.includes(p)) rmSync(p, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  type InjectedPod = k8s.V1Pod & { metadata: { name: string }; spec: k8s.V1PodSpec };
  function meshPodSpec(name: string, role: "server" | "client", target?: string): InjectedPod {
    return {
      metadata: {
        name,
        annotations: { "inject.istio.io/templates": "sidecar,podnet", "sidecar.istio.io/nativeSidecar": "true" },
      },
      spec: {
        automountServiceAccountToken: false,
        containers: [appContainer(role, target)],
      },
    };
  }
  function appContainer(role: "server" | "client", target?: string): k8s.V1Container {
    return {
      name: "app",
      image: APP_IMAGE,
      imagePullPolicy: "Never",
      command: ["node", "-e", role === "server" ? SERVER : CLIENT],
      ...(target === undefined ? {} : { env: [{ name: "TARGET", value: target }] }),
      securityContext: { runAsUser: 1000, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
    };
  }

  async function createMeshPod(name: string, role: "server" | "client", target?: string): Promise<k8s.V1Pod> {
    const injected = kubeInject(injector, meshPodSpec(name, role, target));
    return core.createNamespacedPod({ namespace: NS, body: injected });
  }
  async function createPlainPod(name: string, role: "server" | "client", target?: string): Promise<k8s.V1Pod> {
    return core.createNamespacedPod({ namespace: NS, body: { metadata: { name }, spec: { automountServiceAccountToken: false, containers: [appContainer(role, target)] } } });
  }
  const ref = (p: k8s.V1Pod): PodRef => ({ namespace: p.metadata?.namespace ?? "", name: p.metadata?.name ?? "", uid: p.metadata?.uid ?? "" });

  async function waitRunning(name: string, timeoutMs = 60_000): Promise<k8s.V1Pod> {
    let pod: k8s.V1Pod | undefined;
    await waitUntil(`pod ${name} Running`, timeoutMs, async () => {
      pod = await core.readNamespacedPod({ namespace: NS, name });
      return pod.status?.phase === "Running" && pod.status.containerStatuses?.every((c) => c.ready) === true;
    }, () => JSON.stringify(pod?.status?.initContainerStatuses?.map((s) => [s.name, s.state]) ?? pod?.status));
    return pod as k8s.V1Pod;
  }

  const waiterExit = (p: k8s.V1Pod) => p.status?.initContainerStatuses?.find((s) => s.name === WAITER_CONTAINER)?.state?.terminated?.exitCode;

  /** The inode of a running pod's netns, from the kubelet's pod cgroup. */
  function podNetns(p: k8s.V1Pod): string {
    const cgroup = podCgroup(p);
    const pids = readdirSync(cgroup, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .flatMap((d) => readFileSync(path.join(cgroup, d.name, "cgroup.procs"), "utf8").split("\n").filter((l) => l !== ""));
    const inodes = new Set(pids.map((pid) => /\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/net`))?.[1] ?? ""));
    assert.equal(inodes.size, 1);
    return [...inodes][0] ?? "";
  }

  test("mesh pods are programmed by the DaemonSet's node-runner: the waiter exits 0, traffic is intercepted both ways; a non-mesh pod is left alone", async () => {
    assertAvailable(missing);
    assert.ok(node !== undefined);
    await createMeshPod("mesh-server", "server");
    await createPlainPod("plain-server", "server");
    const meshServer = await waitRunning("mesh-server");
    const plainServer = await waitRunning("plain-server");
    await createMeshPod("mesh-client", "client", plainServer.status?.podIP);
    await createPlainPod("plain-client", "client", meshServer.status?.podIP);
    const meshClient = await waitRunning("mesh-client");
    const plainClient = await waitRunning("plain-client");

    for (const p of [meshServer, meshClient]) {
      assert.equal(waiterExit(p), 0, `${p.metadata?.name ?? ""}: the waiter init container exited 0`);
      const annotations = (await core.readNamespacedPod({ namespace: NS, name: p.metadata?.name ?? "" })).metadata?.annotations ?? {};
      assert.equal(annotations[MARK.status], STATUS_INITIALIZED);
      assert.equal(annotations[MARK.netns], podNetns(p), "marked for the netns the kubelet made");
    }
    await waitUntil("traffic answers", 20_000, () => node?.containerLog(ref(meshClient), "app").includes("answer") === true && node.containerLog(ref(plainClient), "app").includes("answer"));
    // The mesh pod's outbound connection to a plain pod lands on its own proxy (15001)...
    assert.match(node.containerLog(ref(meshClient), "app"), /answer outbound 15001/);
    assert.doesNotMatch(node.containerLog(ref(meshClient), "app"), /answer app/);
    // ...and a plain pod's connection to a mesh pod lands on the mesh pod's proxy (15006).
    assert.match(node.containerLog(ref(plainClient), "app"), /answer inbound 15006/);
    assert.match(node.containerLog(ref(meshServer), "istio-proxy"), /"direction":"inbound"/);
    // The plain pods: never marked, no rules in their netns.
    for (const p of [plainServer, plainClient]) {
      const annotations = (await core.readNamespacedPod({ namespace: NS, name: p.metadata?.name ?? "" })).metadata?.annotations ?? {};
      assert.equal(annotations[MARK.status], undefined);
      const rules = execFileSync("nsenter", [`--net=/proc/${firstPid(p)}/ns/net`, "iptables-save"], { encoding: "utf8" });
      assert.doesNotMatch(rules, /ISTIO_/, `${p.metadata?.name ?? ""} has no Istio rules`);
    }
  });

  test("a sandbox re-created by killing its pause process gets a new netns and is programmed again", async () => {
    assertAvailable(missing);
    const before = await core.readNamespacedPod({ namespace: NS, name: "mesh-server" });
    const oldNetns = before.metadata?.annotations?.[MARK.netns];
    const pausePid = sandboxPid(before);
    process.kill(pausePid, "SIGKILL");
    let after: k8s.V1Pod | undefined;
    await waitUntil("re-programmed for the new netns", 90_000, async () => {
      after = await core.readNamespacedPod({ namespace: NS, name: "mesh-server" });
      const netns = after.metadata?.annotations?.[MARK.netns];
      return netns !== undefined && netns !== oldNetns && after.status?.phase === "Running" && after.status.containerStatuses?.every((c) => c.ready) === true;
    }, () => JSON.stringify(after?.status?.initContainerStatuses?.map((s) => [s.name, s.state, s.restartCount])));
    assert.ok(after !== undefined);
    assert.equal(after.metadata?.annotations?.[MARK.netns], podNetns(after));
    assert.equal(waiterExit(after), 0);
  });

  test("pods deleted while their rules are applied, and the node-runner pod restarted mid-burst: every pod that stays is programmed", async () => {
    assertAvailable(missing);
    const names = Array.from({ length: 8 }, (_, i) => `burst-${i}`);
    const doomed = ["doomed-0", "doomed-1", "doomed-2"];
    for (const name of [...doomed, ...names.slice(0, 4)]) await createMeshPod(name, "server");
    for (const name of doomed) await core.deleteNamespacedPod({ namespace: NS, name, gracePeriodSeconds: 0 });
    const runner = await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: "app.kubernetes.io/name=podnet-node-runner" });
    await core.deleteNamespacedPod({ namespace: "podnet-system", name: runner.items[0]?.metadata?.name ?? "" });
    for (const name of names.slice(4)) await createMeshPod(name, "server");
    for (const name of names) {
      const p = await waitRunning(name, 120_000);
      assert.equal(waiterExit(p), 0, `${name}: waiter exited 0`);
    }
    for (const name of doomed) {
      await waitUntil(`${name} gone`, 60_000, async () => (await core.listNamespacedPod({ namespace: NS, fieldSelector: `metadata.name=${name}` })).items.length === 0);
    }
  });
});

/** The kubelet's cgroup of the pod (cgroupfs driver: kubepods[/<qos>]/pod<uid>), in the pids hierarchy. */
function podCgroup(p: k8s.V1Pod): string {
  const uid = p.metadata?.uid ?? "";
  const found = ["besteffort/", "burstable/", ""].map((qos) => `/sys/fs/cgroup/pids/kubepods/${qos}pod${uid}`).find((dir) => existsSync(dir));
  if (found === undefined) throw new Error(`no kubelet cgroup for pod ${uid}`);
  return found;
}

function firstPid(p: k8s.V1Pod): string {
  const cgroup = podCgroup(p);
  for (const child of readdirSync(cgroup, { withFileTypes: true }).filter((d) => d.isDirectory())) {
    const pid = readFileSync(path.join(cgroup, child.name, "cgroup.procs"), "utf8").split("\n")[0];
    if (pid !== undefined && pid !== "") return pid;
  }
  throw new Error(`no process in ${cgroup}`);
}

/** The pod's sandbox (pause) process: the one whose command line is /pause. */
function sandboxPid(p: k8s.V1Pod): number {
  const cgroup = podCgroup(p);
  for (const child of readdirSync(cgroup, { withFileTypes: true }).filter((d) => d.isDirectory())) {
    for (const pid of readFileSync(path.join(cgroup, child.name, "cgroup.procs"), "utf8").split("\n").filter((l) => l !== "")) {
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("/pause")) return Number(pid);
    }
  }
  throw new Error(`no pause process in ${cgroup}`);
}

async function waitUntil(what: string, timeoutMs: number, probe: () => Promise<boolean> | boolean, detail?: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await Promise.resolve(probe()).catch(() => false)) return;
    if (Date.now() > deadline) assert.fail(`${what}: not after ${timeoutMs} ms${detail === undefined ? "" : `: ${detail()}`}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
