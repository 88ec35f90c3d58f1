// End to end on a cluster of two real nodes (test/support/real-node-stack.ts): the node-runner
// runs as the chart's DaemonSet from the Dockerfile's image on both, mesh pods are injected by
// Istio's own istiod (its webhook, installed with Istio's chart) with the project's template, their waiter is a real init container in
// the kubelet's netns and cgroup, each pod is programmed by its own node's runner (the function
// sends to the pod's hostIP), and interception is proven by traffic between pods on different
// nodes.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { MARK, readMark, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../../contract/mark.ts";
import { WAITER_CONTAINER } from "../../functions/decision.ts";
import { BIN, waitFor } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { ISTIOCTL } from "../support/istio-injector.ts";
import { installIstioCni, ISTIO_TEMPLATE_ONLY, ISTIOD_CHART } from "../support/istiod.ts";
import { istioRulesOf, missingRealNodeReason, onNode as onNodeOf, podPids, podRef, realNodeStackFixture, RUNNER_LABEL } from "../support/real-node-stack.ts";

const missing = missingRealNodeReason();
const NS = "shop";
const root = path.resolve(import.meta.dirname, "../..");

describe("end to end on a cluster of two real nodes [needs root, control plane, node binaries, istiod and images]", skipUnlessCI(missing), () => {
  const s = realNodeStackFixture(missing, "real node", { namespaces: [NS] });

  const create = (body: k8s.V1Pod) => s().core.createNamespacedPod({ namespace: NS, body });
  const plainPod = (name: string, app: k8s.V1Container): k8s.V1Pod => ({
    metadata: { name },
    spec: { automountServiceAccountToken: false, containers: [app] },
  });
  /** The pod, scheduled onto the cluster's node `index` (0-based). */
  const onNode = (index: number, pod: k8s.V1Pod): k8s.V1Pod => onNodeOf(s().nodes[index], pod);
  const read = (name: string) => s().core.readNamespacedPod({ namespace: NS, name });
  const waiterExit = (p: k8s.V1Pod) => p.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER)?.state?.terminated?.exitCode;
  const netnsOf = (pid: number) => /\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/net`))?.[1] ?? "";

  /** The inode of a running pod's netns, from the kubelet's pod cgroup (one for all its processes). */
  function podNetns(p: k8s.V1Pod): string {
    const inodes = new Set(podPids(p).map(netnsOf));
    assert.equal(inodes.size, 1, "all of the pod's processes share one netns");
    return [...inodes][0] ?? "";
  }

  /** What the node-runner programmed in a mesh pod (the first test), for Istio's own ways to be compared with. */
  let podnetRules: string[] = [];

  test("mesh pods on both nodes are programmed by their own node's runner: the waiter exits 0, traffic between the nodes is intercepted both ways; a non-mesh pod is left alone", async () => {
    const { nodeOf, meshPod, appContainer, waitRunning } = s();
    // Servers on the first node, clients on the second: every connection crosses the fabric.
    await create(onNode(0, meshPod("mesh-server", appContainer("server"))));
    await create(onNode(0, plainPod("plain-server", appContainer("server"))));
    const meshServer = await waitRunning(NS, "mesh-server");
    const plainServer = await waitRunning(NS, "plain-server");
    await create(onNode(1, meshPod("mesh-client", appContainer("client", plainServer.status?.podIP))));
    await create(onNode(1, plainPod("plain-client", appContainer("client", meshServer.status?.podIP))));
    const meshClient = await waitRunning(NS, "mesh-client");
    const plainClient = await waitRunning(NS, "plain-client");

    for (const p of [meshServer, meshClient]) {
      assert.equal(waiterExit(p), 0, `${p.metadata?.name ?? ""}: the waiter init container exited 0`);
      const annotations = (await read(p.metadata?.name ?? "")).metadata?.annotations ?? {};
      assert.equal(annotations[MARK.status], STATUS_INITIALIZED);
      assert.equal(annotations[MARK.netns], podNetns(p), "marked for the netns the kubelet made");
    }
    assert.notEqual(meshServer.spec?.nodeName, meshClient.spec?.nodeName, "the mesh pods are on different nodes");
    // Each mesh pod's request went to its own node's runner, at the pod's hostIP.
    const runnerPods = (await s().core.listNamespacedPod({ namespace: "podnet-system", labelSelector: RUNNER_LABEL })).items;
    for (const p of [meshServer, meshClient]) {
      const own = runnerPods.find((r) => r.spec?.nodeName === p.spec?.nodeName);
      const other = runnerPods.find((r) => r.spec?.nodeName !== p.spec?.nodeName);
      assert.ok(own !== undefined && other !== undefined, "a runner on each node");
      assert.equal(p.status?.hostIP, nodeOf(p).ip);
      const applied = new RegExp(`"name":"${p.metadata?.name ?? ""}"[^\n]*"result":"applied"`);
      assert.match(
        nodeOf(own).containerLog(podRef(own), "node-runner"),
        applied,
        `${p.metadata?.name ?? ""}: applied by the runner of ${p.spec?.nodeName ?? ""}`,
      );
      assert.doesNotMatch(nodeOf(other).containerLog(podRef(other), "node-runner"), applied, "and not by the other node's");
    }
    const logOf = (p: k8s.V1Pod, container = "app") => nodeOf(p).containerLog(podRef(p), container);
    await waitFor("traffic answers", 20_000, () => logOf(meshClient).includes("answer") && logOf(plainClient).includes("answer"));
    // The mesh pod's outbound connection to a plain pod lands on its own proxy (15001)...
    assert.match(logOf(meshClient), /answer outbound 15001/);
    assert.doesNotMatch(logOf(meshClient), /answer app/);
    // ...and a plain pod's connection to a mesh pod lands on the mesh pod's proxy (15006).
    assert.match(logOf(plainClient), /answer inbound 15006/);
    assert.match(logOf(meshServer, "istio-proxy"), /"direction":"inbound"/);
    // The plain pods: never marked, no rules in their netns.
    for (const p of [plainServer, plainClient]) {
      assert.equal((await read(p.metadata?.name ?? "")).metadata?.annotations?.[MARK.status], undefined);
      assert.deepEqual(istioRulesOf(p), [], `${p.metadata?.name ?? ""} has no Istio rules`);
    }
    podnetRules = istioRulesOf(meshServer);
  });

  test("README's way: a Deployment in a namespace labelled istio-injection=enabled is injected by istiod's webhook (no kube-inject), programmed, and again after a rollout restart; istioctl analyze finds no unknown annotation of the project's", async () => {
    const { core, cp, createNamespace, createWebDeployment } = s();
    const ns = "store";
    await createNamespace(ns, { "istio-injection": "enabled" });
    await createWebDeployment(ns, 2);
    const kubectl = (...args: string[]) =>
      execFileSync(BIN.kubectl, ["--kubeconfig", cp.writeKubeconfig("kubectl", cp.adminToken), ...args], { encoding: "utf8" });
    /** The Deployment's pods once every one of the newest ReplicaSet's is Running and ready. */
    const rolledOut = async (): Promise<k8s.V1Pod[]> => {
      kubectl("-n", ns, "rollout", "status", "deployment/web", "--timeout=120s");
      let pods: k8s.V1Pod[] = [];
      await waitFor("only the new pods left", 60_000, async () => {
        pods = (await core.listNamespacedPod({ namespace: ns, labelSelector: "app=web" })).items;
        return pods.length === 2 && pods.every((p) => p.metadata?.deletionTimestamp === undefined && p.status?.phase === "Running");
      });
      return pods;
    };
    const check = (pods: k8s.V1Pod[]): void => {
      for (const p of pods) {
        const name = p.metadata?.name ?? "";
        const annotations = p.metadata?.annotations ?? {};
        assert.match(annotations["sidecar.istio.io/status"] ?? "", /"istio-proxy"/, `${name}: injected by istiod's webhook`);
        const inits = (p.spec?.initContainers ?? []).map((c) => c.name);
        assert.equal(inits[0], WAITER_CONTAINER, `${name}: the podnet template's waiter first (${inits.join(",")})`);
        assert.match(p.spec?.initContainers?.[0]?.image ?? "", /podnet\/waiter/);
        assert.ok(!inits.includes("istio-init"), `${name}: no privileged istio-init`);
        assert.equal(annotations[MARK.status], STATUS_INITIALIZED, `${name}: marked`);
        assert.equal(waiterExit(p), 0, `${name}: the waiter exited 0`);
        assert.equal(annotations[MARK.netns], podNetns(p), `${name}: marked for its own netns`);
      }
    };
    const first = await rolledOut();
    check(first);
    kubectl("-n", ns, "rollout", "restart", "deployment/web");
    await waitFor("the restart's new ReplicaSet", 30_000, async () => {
      const pods = (await core.listNamespacedPod({ namespace: ns, labelSelector: "app=web" })).items;
      return pods.some((p) => !first.some((f) => f.metadata?.uid === p.metadata?.uid));
    });
    const second = await rolledOut();
    assert.ok(
      second.every((p) => !first.some((f) => f.metadata?.uid === p.metadata?.uid)),
      "new pods",
    );
    check(second);
    // Istio's own analyzer on the live cluster, marked pods included: it reports any annotation
    // under istio.io it does not know (IST0108), which the project's are no longer.
    const analyze = spawnSync(ISTIOCTL, ["analyze", "--all-namespaces", "--kubeconfig", cp.writeKubeconfig("istioctl", cp.adminToken)], { encoding: "utf8" });
    const findings = `${analyze.stdout}${analyze.stderr}`;
    assert.ok(analyze.status === 0 && !/IST0108/.test(findings), `istioctl analyze: exit ${String(analyze.status)}\n${findings}`);
    await core.deleteNamespace({ name: ns });
  });

  test("a sandbox re-created by killing its pause process gets a new netns and is programmed again", async () => {
    const before = await read("mesh-server");
    const oldNetns = before.metadata?.annotations?.[MARK.netns];
    const pause = podPids(before).find((pid) => readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("/pause"));
    assert.ok(pause !== undefined, "the sandbox's pause process");
    process.kill(pause, "SIGKILL");
    let after: k8s.V1Pod | undefined;
    // The new sandbox's netns may get the old one's inode number back (the kernel reuses freed
    // ones): what shows the re-creation is the waiter run again, in the netns the mark names.
    const waiterRuns = (p: k8s.V1Pod) => p.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER)?.restartCount ?? 0;
    const runsBefore = waiterRuns(before);
    await waitFor(
      "re-programmed for the new netns",
      90_000,
      async () => {
        after = await read("mesh-server");
        const netns = after.metadata?.annotations?.[MARK.netns];
        if (
          netns === undefined ||
          waiterRuns(after) <= runsBefore ||
          after.status?.phase !== "Running" ||
          after.status.containerStatuses?.every((c) => c.ready) !== true
        )
          return false;
        return netns === podNetns(after);
      },
      undefined,
      () => JSON.stringify(after?.status?.initContainerStatuses?.map((c) => [c.name, c.state, c.restartCount])),
    );
    assert.ok(after !== undefined);
    assert.equal(after.metadata?.annotations?.[MARK.netns], podNetns(after));
    assert.equal(waiterExit(after), 0);
    if (podNetns(after) === oldNetns) process.stderr.write(`the new sandbox's netns reused inode ${oldNetns}\n`);
  });

  test("pods deleted while their rules are applied, and the node-runner pod restarted mid-burst: every pod that stays is programmed", async () => {
    const { core, meshPod, appContainer, waitRunning } = s();
    const names = Array.from({ length: 8 }, (_, i) => `burst-${i}`);
    const doomed = ["doomed-0", "doomed-1", "doomed-2"];
    for (const name of [...doomed, ...names.slice(0, 4)]) await create(meshPod(name, appContainer("server")));
    for (const name of doomed) await core.deleteNamespacedPod({ namespace: NS, name, gracePeriodSeconds: 0 });
    const runner = await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: RUNNER_LABEL });
    await core.deleteNamespacedPod({ namespace: "podnet-system", name: runner.items[0]?.metadata?.name ?? "" });
    for (const name of names.slice(4)) await create(meshPod(name, appContainer("server")));
    for (const name of names) {
      const p = await waitRunning(NS, name, 120_000);
      assert.equal(waiterExit(p), 0, `${name}: waiter exited 0`);
      assert.equal(p.metadata?.annotations?.[MARK.netns], podNetns(p));
    }
    for (const name of doomed) {
      await waitFor(
        `${name} gone`,
        60_000,
        async () => (await core.listNamespacedPod({ namespace: NS, fieldSelector: `metadata.name=${name}` })).items.length === 0,
      );
    }
  });

  test("a runner's own node-bound token marks nothing on the other node (the admission policy, with the DaemonSet pod's real token)", async () => {
    const { core, nodes } = s();
    const runners = (await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: RUNNER_LABEL })).items;
    const first = runners.find((r) => r.spec?.nodeName === nodes[0]?.name);
    assert.ok(first !== undefined);
    // The token the kubelet projected into the first node's runner, read inside its container.
    const pid = podPids(first).find((p) => readFileSync(`/proc/${p}/cmdline`, "utf8").includes("node-runner"));
    assert.ok(pid !== undefined, "the runner's process");
    const token = execFileSync("nsenter", [`--mount=/proc/${pid}/ns/mnt`, "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"], {
      encoding: "utf8",
    });
    const asRunner = s().cp.kubeConfig(token).makeApiClient(k8s.CoreV1Api);
    const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);
    const mark = (name: string) =>
      asRunner.patchNamespacedPod({ namespace: NS, name, body: { metadata: { annotations: { [MARK.status]: STATUS_INITIALIZED } } } }, merge);
    // plain-client runs on the second node, plain-server on the first.
    await assert.rejects(
      mark("plain-client"),
      (err: unknown) => err instanceof k8s.ApiException && err.code === 403 && /may only mark pods bound to that node/.test(err.message),
    );
    await assert.rejects(
      asRunner.readNamespacedPod({ namespace: NS, name: "plain-server" }),
      (err: unknown) => err instanceof k8s.ApiException && err.code === 403,
    );
    assert.equal((await read("plain-client")).metadata?.annotations?.[MARK.status], undefined);
  });

  test("a pod whose capture configuration is refused says why at once: its waiter exits 14 with the reason, which kubectl describe shows", async () => {
    const { core, meshPod, appContainer } = s();
    // Istio's injector accepts a port written "080" (it validates the number), and would render
    // it as written; this project refuses it (docs/testing.md, "Where the project is stricter").
    const created = Date.now();
    await create(onNode(1, meshPod("refused", appContainer("server"), { annotations: { "traffic.sidecar.istio.io/excludeInboundPorts": "080" } })));
    let pod: k8s.V1Pod | undefined;
    const waiterState = (p: k8s.V1Pod | undefined) => {
      const status = p?.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER);
      return status?.state?.terminated ?? status?.lastState?.terminated;
    };
    await waitFor(
      "the waiter ended with the refusal",
      60_000,
      async () => {
        pod = await read("refused");
        return waiterState(pod) !== undefined;
      },
      undefined,
      () => JSON.stringify(pod?.status?.initContainerStatuses),
    );
    const ended = waiterState(pod);
    assert.equal(ended?.exitCode, 14, JSON.stringify(ended));
    assert.match(ended.message ?? "", /^refused by the podnet controller: invalid capture configuration: .*excludeInboundPorts: "080"/);
    const seconds = (Date.parse(String(ended.finishedAt)) - created) / 1000;
    console.log(`refused pod: the waiter ended ${seconds.toFixed(1)} s after the pod was created (its timeout is 120 s)`);
    assert.ok(seconds < 60, `at once, not at the waiter's timeout (${seconds} s)`);
    const annotations = (await read("refused")).metadata?.annotations ?? {};
    assert.equal(annotations[MARK.status], STATUS_REFUSED);

    // The CLI says the same as the cluster: `pnc status` lists the refusal and the programmed
    // pods' rules, and `pnc plan` of a live pod prints the digest its mark carries.
    const kubeconfig = s().cp.writeKubeconfig("pnc", s().cp.adminToken);
    const pnc = (args: string[], input?: string) =>
      execFileSync(process.execPath, ["--import", "tsx", path.join(root, "cli/pnc.ts"), ...args], {
        encoding: "utf8",
        cwd: root,
        ...(input === undefined ? {} : { input }),
      });
    const status = pnc(["status", "-n", NS, "--kubeconfig", kubeconfig]);
    assert.match(status, /^NAMESPACE\s+NAME\s+NODE\s+MARK\s+WAITER\s+DETAIL$/m);
    assert.match(status, /^shop\s+refused\s+pnc-node-2\s+refused\s+\S.*invalid capture configuration: .*excludeInboundPorts: "080"/m);
    const server = await read("mesh-server");
    const marked = server.metadata?.annotations?.[MARK.rules] ?? "";
    assert.match(status, new RegExp(`^shop\\s+mesh-server\\s+pnc-node-1\\s+initialized\\s+exited 0( \\(\\d+ restarts\\))?\\s+rules ${marked} in netns`, "m"));
    const planned = JSON.parse(pnc(["plan", "-", "--json", "--backend", "iptables-nft"], JSON.stringify(server))) as { rulesDigest: string };
    assert.equal(planned.rulesDigest, marked, "pnc plan's digest is the mark's (the nodes' iptables is iptables-nft)");
    await core.deleteNamespacedPod({ namespace: NS, name: "refused", gracePeriodSeconds: 0 });
  });

  // istio-system: Istio's webhook injects there, and the function's default policy excludes it
  // (as the chart's excludes knative-serving, which Knative's docs label for injection).
  test("a mesh pod in a namespace the policy excludes starts: its node-runner marks it skipped with the reason and its waiter lets it start, with no rules", async () => {
    const { core, meshPod, appContainer, waitRunning } = s();
    const excluded = "istio-system";
    await core.createNamespacedPod({ namespace: excluded, body: onNode(0, meshPod("excluded", appContainer("server"))) });
    const pod = await waitRunning(excluded, "excluded", 60_000);
    assert.equal(pod.spec?.initContainers?.[0]?.name, WAITER_CONTAINER, "injected with the waiter");
    const waiter = pod.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER)?.state?.terminated;
    assert.equal(waiter?.exitCode, 0);
    assert.equal(waiter.message?.trim(), "not meshed: the policy skips this pod (namespace-excluded: istio-system)");
    assert.deepEqual(readMark(pod.metadata?.annotations ?? {}), {
      status: STATUS_SKIPPED,
      reason: "the policy skips this pod (namespace-excluded: istio-system)",
    });
    // Nothing in its netns: no ISTIO_ chain.
    const saved = execFileSync("nsenter", [`--net=/proc/${podPids(pod)[0] ?? 0}/ns/net`, "iptables-save"], { encoding: "utf8" });
    assert.doesNotMatch(saved, /ISTIO_/);
    const events = await core.listNamespacedEvent({ namespace: excluded, fieldSelector: `involvedObject.name=excluded,reason=NetworkInitSkipped` });
    assert.match(events.items[0]?.message ?? "", /released, so the pod starts without traffic interception/);
    await core.deleteNamespacedPod({ namespace: excluded, name: "excluded", gracePeriodSeconds: 0 });
  });

  // Last: it uninstalls the project.
  test("helm uninstall stops while istiod injects the podnet template (the pre-delete Job's log says which revision and what to do), and goes on once it does not: the node-runners stop first and take their state from the nodes", async () => {
    const { cp, core } = s();
    const admin = cp.writeKubeconfig("uninstall", cp.adminToken);
    const uninstall = () =>
      spawnSync(BIN.helm, ["uninstall", "podnet", "--namespace", "podnet-system", "--wait", "--timeout", "120s", "--kubeconfig", admin], { encoding: "utf8" });
    const refused = uninstall();
    assert.notEqual(refused.status, 0, "refused");
    assert.match(refused.stderr, /job podnet-uninstall-check failed/);
    const log = execFileSync(BIN.kubectl, ["--kubeconfig", admin, "-n", "podnet-system", "logs", "job/podnet-uninstall-check"], { encoding: "utf8" });
    assert.match(log, /istio-system\/istio-sidecar-injector still inject the podnet template: .* helm uninstall --no-hooks/);
    assert.equal((await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: RUNNER_LABEL })).items.length, 2, "the node-runners stay");
    for (const node of s().nodes) assert.ok((node.listDir("/run/podnet") ?? []).includes("nonces.jsonl"), `${node.name}: the runner's state is there`);

    // README's Uninstall, step 1: istiod's release without the template and its default, then again.
    execFileSync(
      BIN.helm,
      [
        "upgrade",
        "istiod",
        ISTIOD_CHART,
        "--namespace",
        "istio-system",
        "--reset-then-reuse-values",
        "--set",
        "sidecarInjectorWebhook.templates.podnet=null",
        "--set",
        "sidecarInjectorWebhook.defaultTemplates={sidecar}",
        "--kubeconfig",
        admin,
      ],
      { encoding: "utf8" },
    );
    const injector = await core.readNamespacedConfigMap({ namespace: "istio-system", name: "istio-sidecar-injector" });
    assert.doesNotMatch(injector.data?.config ?? "", /^\s+podnet:/m, "the template is gone from istiod's injector");
    const done = uninstall();
    assert.equal(done.status, 0, done.stderr);
    await waitFor(
      "the node-runners gone",
      60_000,
      async () => (await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: RUNNER_LABEL })).items.length === 0,
    );
    // The hook stopped the runners before their RBAC went: each saw its DaemonSet go and removed its state.
    for (const node of s().nodes) assert.deepEqual(node.listDir("/run/podnet"), [], `${node.name}: the runner's state is gone from the node`);
  });

  // After the uninstall, Istio's own two ways on the same nodes (what bench:node compares with):
  // istio-init, and Istio's istio-cni chart, whose plugin must program a pod exactly as the
  // node-runner did (the project claims istio-cni's rules; test/parity proves it against
  // istio-cni's code in process, this against its installed plugin in a live pod).
  test("then Istio's own ways on these nodes: istio-init (pilot-agent's istio-iptables) programs a pod; with Istio's istio-cni chart its plugin programs one with the very rules the node-runner gave a mesh pod", async () => {
    const { cp, nodes, meshPod, appContainer, waitRunning } = s();
    assert.ok(podnetRules.length > 10, "the first test saved a mesh pod's rules");
    const exitOf = (p: k8s.V1Pod, name: string) => p.status?.initContainerStatuses?.find((c) => c.name === name)?.state?.terminated?.exitCode;

    await create(onNode(0, meshPod("istio-init-server", appContainer("server"), { annotations: ISTIO_TEMPLATE_ONLY })));
    const viaInit = await waitRunning(NS, "istio-init-server", 120_000);
    assert.equal(exitOf(viaInit, "istio-init"), 0, "Istio's istio-init ran");
    assert.ok(istioRulesOf(viaInit).length > 10, "and programmed the pod");
    assert.equal(viaInit.metadata?.annotations?.[MARK.status], undefined, "nothing of the project's marked it");

    await installIstioCni(cp, nodes, [], () => undefined);
    await create(onNode(1, meshPod("istio-cni-server", appContainer("server"), { annotations: ISTIO_TEMPLATE_ONLY })));
    const viaCni = await waitRunning(NS, "istio-cni-server", 120_000);
    assert.equal(exitOf(viaCni, "istio-validation"), 0, "istio-validation (pilot-agent's check) saw interception");
    assert.deepEqual(istioRulesOf(viaCni), podnetRules, "istio-cni's plugin programmed what the node-runner programmed");
  });
});
