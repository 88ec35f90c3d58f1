// The project through Knative's own controllers on a cluster of two real nodes: Knative Eventing
// and Serving of one release installed from its own configuration (test/support/knative.ts),
// Traefik as Serving's ingress, the chart installed as README says with the OIDC feature on.
// Knative's controller makes the ApiServerSource's adapter Deployment with the environment it
// chooses, Serving runs the function as a Revision with its queue-proxy, and mesh pods on both
// nodes are programmed through that chain: adapter pod → Traefik → queue-proxy → function →
// node-runners. Nothing here writes a Knative object's status.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { NODE_RUNNER_SERVER_NAME } from "../../contract/apply-request.ts";
import { MARK, readMark, STATUS_INITIALIZED, STATUS_SKIPPED } from "../../contract/mark.ts";
import { WAITER_CONTAINER } from "../../functions/decision.ts";
import { POLICY_CONFIGMAP, POLICY_KEY } from "../../functions/policy.ts";
import { BIN, waitFor, type ControlPlane } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { missingKnativeReason, patchConfigMap } from "../support/knative.ts";
import {
  missingRealNodeReason,
  onNode,
  podPids,
  podRef,
  realNodeStackFixture,
  RUNNER_LABEL,
  runnersRolledOut,
  type RealNodeStack,
} from "../support/real-node-stack.ts";

const missing = missingRealNodeReason() ?? missingKnativeReason();
const NS = "shop";
const root = path.resolve(import.meta.dirname, "../..");
/** The function's audience, as the chart's sources and Triggers name it in the namespace it is installed in. */
const functionAudience = (namespace: string): string => `serving.knative.dev/service/${namespace}/podnet-decision`;
const SOURCE_IDENTITY = "podnet-pods-oidc-sources.knative.dev-apiserversource";

/** Whether the log of one of the function's serving pods (a Revision may have been rolled) matches. */
async function functionLogMatches(stack: RealNodeStack, pattern: RegExp): Promise<boolean> {
  const pods = await stack.core.listNamespacedPod({ namespace: stack.installNamespace, labelSelector: "serving.knative.dev/service=podnet-decision" });
  return pods.items
    .filter((p) => p.metadata?.deletionTimestamp === undefined && p.status?.phase === "Running")
    .some((p) => pattern.test(stack.nodeOf(p).containerLog(podRef(p), "decision")));
}

/**
 * The rules each pod whose name starts with `prefix` was applied with, by whichever node-runner:
 * from the runners' logs and, for runners rolled away (their logs gone), the pods' Events.
 */
async function rulesApplied(stack: RealNodeStack, system: string, prefix: string, namespaces: readonly string[]): Promise<Map<string, Set<string>>> {
  const rulesOf = new Map<string, Set<string>>();
  const saw = (name: string, rules: string): void => void rulesOf.set(name, new Set([...(rulesOf.get(name) ?? []), rules]));
  const applied = new RegExp(`"name":"(${prefix}[^"]*)"[^\\n]*"rules":"([0-9a-f]+)"`);
  for (const runner of (await stack.core.listNamespacedPod({ namespace: system, labelSelector: RUNNER_LABEL })).items) {
    for (const line of stack.nodeOf(runner).containerLog(podRef(runner), "node-runner").split("\n")) {
      const entry = applied.exec(line);
      if (entry?.[1] !== undefined && entry[2] !== undefined) saw(entry[1], entry[2]);
    }
  }
  for (const namespace of namespaces) {
    for (const e of (await stack.core.listNamespacedEvent({ namespace, fieldSelector: "reason=NetworkInitialized" })).items) {
      const rules = /\(rules ([0-9a-f]+)\)/.exec(e.message ?? "")?.[1];
      if (e.involvedObject.name?.startsWith(prefix) === true && rules !== undefined) saw(e.involvedObject.name, rules);
    }
  }
  return rulesOf;
}

/** `pnc` as an operator runs it, against the cluster of this kubeconfig. */
const pnc = (kubeconfig: string, ...args: string[]) =>
  spawnSync(process.execPath, ["--import", "tsx", path.join(root, "cli/pnc.ts"), ...args, "--kubeconfig", kubeconfig], { cwd: root, encoding: "utf8" });

/** The sink, audience and OIDC identity in the environment of the adapter Deployment Knative made for an ApiServerSource. */
async function adapterEnv(cp: ControlPlane, namespace: string, source: string): Promise<Record<string, string>> {
  const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
  const made = await apps.listNamespacedDeployment({ namespace, labelSelector: `eventing.knative.dev/sourceName=${source}` });
  assert.equal(made.items.length, 1, `one adapter Deployment for ${source}, made by Knative's controller`);
  const env = made.items[0]?.spec?.template.spec?.containers[0]?.env ?? [];
  return Object.fromEntries(env.filter((e) => ["K_SINK", "K_AUDIENCE", "K_OIDC_SERVICE_ACCOUNT"].includes(e.name)).map((e) => [e.name, e.value ?? ""]));
}

for (const delivery of ["direct", "broker"] as const) {
  // The Broker variant is installed in a namespace of its own choosing: the chart follows it
  // everywhere it names its namespace (audiences, senders, the admission policies' identities).
  const system = delivery === "broker" ? "mesh-ops" : "podnet-system";
  describe(
    `through Knative's own controllers, ${delivery} delivery, installed in ${system} [needs root, control plane, node binaries, istiod, Knative and images]`,
    skipUnlessCI(missing),
    () => {
      const s = realNodeStackFixture(missing, `knative ${delivery}`, { namespaces: [NS], knative: { delivery, namespace: system } });

      test("Knative makes the adapter with its sink, that sink's audience and the source's OIDC identity, and runs the function as a Revision with queue-proxy", async () => {
        const { cp, core } = s();
        assert.deepEqual(
          await adapterEnv(cp, system, "podnet-pods"),
          delivery === "direct"
            ? { K_SINK: `http://podnet-decision.${system}.svc.cluster.local`, K_AUDIENCE: functionAudience(system), K_OIDC_SERVICE_ACCOUNT: SOURCE_IDENTITY }
            : {
                K_SINK: `http://broker-ingress.knative-eventing.svc.cluster.local/${system}/podnet`,
                K_AUDIENCE: `eventing.knative.dev/broker/${system}/podnet`,
                K_OIDC_SERVICE_ACCOUNT: SOURCE_IDENTITY,
              },
        );
        const fnPods = await core.listNamespacedPod({ namespace: system, labelSelector: "serving.knative.dev/service=podnet-decision" });
        assert.ok(fnPods.items.length >= 1, "the function's Revision has a pod");
        assert.deepEqual(fnPods.items[0]?.spec?.containers.map((c) => c.name).sort(), ["decision", "queue-proxy"]);
        if (delivery === "broker") {
          // The Broker's filter delivers with each Trigger's identity, for the audience the Trigger names.
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          for (const name of ["podnet-pod-events", "podnet-resync"]) {
            const trigger = (await custom.getNamespacedCustomObject({
              group: "eventing.knative.dev",
              version: "v1",
              namespace: system,
              plural: "triggers",
              name,
            })) as {
              status?: { subscriberAudience?: string; auth?: { serviceAccountName?: string } };
            };
            assert.equal(trigger.status?.subscriberAudience, functionAudience(system), name);
            assert.equal(trigger.status.auth?.serviceAccountName, `${name}-oidc-eventing.knative.dev-trigger`, name);
          }
        }
      });

      test("mesh pods on both nodes are programmed through the chain: adapter pod, Traefik, queue-proxy, function, node-runners", async () => {
        const { core, meshPod, appContainer, waitRunning, nodes } = s();
        for (const [i, node] of nodes.entries())
          await core.createNamespacedPod({ namespace: NS, body: onNode(node, meshPod(`mesh-${i}`, appContainer("server"))) });
        for (const [i] of nodes.entries()) {
          const p = await waitRunning(NS, `mesh-${i}`, 120_000);
          assert.equal(p.metadata?.annotations?.[MARK.status], STATUS_INITIALIZED);
          assert.equal(p.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER)?.state?.terminated?.exitCode, 0);
        }
      });

      test("the PingSource's adapter (Knative's mtping) delivers the resync, every two minutes", async () => {
        await waitFor("a resync from the PingSource done by the function", 150_000, async () =>
          functionLogMatches(s(), /"ceType":"dev\.knative\.sources\.ping"[^\n]*"msg":"resync done"/),
        );
      });

      if (delivery === "direct") {
        test("upgrades without a gap: a 50-pod burst while Knative recreates the deleted adapter pod, rolls the function to a new Revision and the node-runner DaemonSet rolls to a new template: every pod is programmed, none twice with different rules", async () => {
          const { cp, core, meshPod, appContainer, waitRunning } = s();
          const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          const names = Array.from({ length: 50 }, (_, i) => `burst-${String(i)}`);
          const small = { "sidecar.istio.io/proxyCPU": "10m", "sidecar.istio.io/proxyMemory": "32Mi" };
          for (const [i, name] of names.entries()) {
            await core.createNamespacedPod({ namespace: NS, body: meshPod(name, appContainer("server"), { annotations: small }) });
            if (i === 10) {
              // Knative's Deployment makes a new adapter pod; events in between are redelivered or resynced.
              const adapters = await core.listNamespacedPod({ namespace: system, labelSelector: "eventing.knative.dev/sourceName=podnet-pods" });
              for (const p of adapters.items) await core.deleteNamespacedPod({ namespace: system, name: p.metadata?.name ?? "" });
            }
            if (i === 25) {
              // An operator's change to the Service: Serving rolls the function to a new Revision.
              await custom.patchNamespacedCustomObject(
                {
                  group: "serving.knative.dev",
                  version: "v1",
                  namespace: system,
                  plural: "services",
                  name: "podnet-decision",
                  body: { spec: { template: { metadata: { annotations: { "podnet.test/rolled": "1" } } } } },
                },
                k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
              );
            }
            if (i === 35) {
              // helm upgrade with a new node-runner image does this: the DaemonSet's RollingUpdate
              // replaces the runner on one node, then on the other, while pods keep coming.
              await apps.patchNamespacedDaemonSet(
                { namespace: system, name: "podnet-node-runner", body: { spec: { template: { metadata: { annotations: { "podnet.test/rolled": "1" } } } } } },
                k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
              );
            }
          }
          // The resync (every two minutes) is the backstop for events the adapter never saw.
          const marked = new Map<string, string>();
          for (const name of names) {
            const p = await waitRunning(NS, name, 300_000);
            assert.equal(p.metadata?.annotations?.[MARK.status], STATUS_INITIALIZED, name);
            marked.set(name, p.metadata.annotations[MARK.rules] ?? "");
          }
          await waitFor("the DaemonSet rolled on every node", 120_000, () => runnersRolledOut(apps, system));
          const revisions = await core.listNamespacedPod({ namespace: system, labelSelector: "serving.knative.dev/service=podnet-decision" });
          assert.ok(
            revisions.items.some((p) => p.metadata?.labels?.["serving.knative.dev/revision"] === "podnet-decision-00002"),
            "the function was rolled to a new Revision",
          );
          // Every apply of a pod, on whichever node, by whichever runner (the rolled ones' logs are
          // gone: their Events stay) and from whichever Revision, named the rules of its mark.
          const rulesOf = await rulesApplied(s(), system, "burst-", [NS]);
          for (const name of names) assert.deepEqual([...(rulesOf.get(name) ?? [])], [marked.get(name)], `${name}: the rules of its mark, and no other`);
        });

        test("three replicas while the policy changes: with a watch per namespace the adapter sends in parallel and Traefik spreads a 30-pod burst over the function's replicas, each reloading the policy in its own time; every pod runs the rules of its mark (the old policy's or the new), none was programmed with others, and a pod created after the change has the new rules", async () => {
          const { cp, core, meshPod, appContainer, waitRunning, nodeOf, nodes, createNamespace } = s();
          const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          const mergePatch = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);
          const service = { group: "serving.knative.dev", version: "v1", namespace: system, plural: "services", name: "podnet-decision" };
          const source = { group: "sources.knative.dev", version: "v1", namespace: system, plural: "apiserversources", name: "podnet-pods" };
          const readyRevision = async (): Promise<string> =>
            ((await custom.getNamespacedCustomObject(service)) as { status?: { latestReadyRevisionName?: string } }).status?.latestReadyRevisionName ?? "";
          const minScale = (n: string) =>
            custom.patchNamespacedCustomObject(
              { ...service, body: { spec: { template: { metadata: { annotations: { "autoscaling.knative.dev/min-scale": n } } } } } },
              mergePatch,
            );
          const replicasOf = async (revision: string): Promise<k8s.V1Pod[]> =>
            (await core.listNamespacedPod({ namespace: system, labelSelector: `serving.knative.dev/revision=${revision}` })).items.filter(
              (p) => p.metadata?.deletionTimestamp === undefined && p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true,
            );
          // Knative's controller rolls the adapter's Deployment when the source's selector changes.
          const adapterRolled = async (): Promise<boolean> => {
            const made = await apps.listNamespacedDeployment({ namespace: system, labelSelector: "eventing.knative.dev/sourceName=podnet-pods" });
            return made.items.every((d) => {
              const st = d.status;
              const want = d.spec?.replicas ?? 1;
              return (
                (st?.observedGeneration ?? 0) >= (d.metadata?.generation ?? 1) &&
                st?.updatedReplicas === want &&
                st.availableReplicas === want &&
                st.replicas === want
              );
            });
          };
          const namespaces = Array.from({ length: 6 }, (_, i) => `replicas-${String(i)}`);
          const policyBefore =
            (await core.readNamespacedConfigMap({ namespace: system, name: POLICY_CONFIGMAP })).data?.[POLICY_KEY] ?? assert.fail("the chart's policy");
          const changed = parseYaml(policyBefore) as { revision?: string; capture?: { defaults?: Record<string, unknown> } } | null;
          const policyAfter = stringifyYaml({
            ...changed,
            revision: "replicas-test",
            capture: { ...changed?.capture, defaults: { ...changed?.capture?.defaults, outboundPortsExclude: "9999" } },
          });
          const names = Array.from({ length: 30 }, (_, i) => ({ namespace: namespaces[i % namespaces.length] ?? NS, name: `replica-${String(i)}` }));
          const rolledFrom = await readyRevision();
          for (const ns of namespaces) await createNamespace(ns);
          await minScale("3");
          // What README's "Large clusters" sets: a watch per namespace, each sending on its own.
          await custom.patchNamespacedCustomObject(
            {
              ...source,
              body: {
                spec: { namespaceSelector: { matchExpressions: [{ key: "kubernetes.io/metadata.name", operator: "In", values: [NS, ...namespaces] }] } },
              },
            },
            mergePatch,
          );
          try {
            let revision = "";
            await waitFor("a Revision with three ready replicas", 240_000, async () => {
              revision = await readyRevision();
              return revision !== rolledFrom && (await replicasOf(revision)).length === 3;
            });
            await waitFor("the adapter rolled to a watch per namespace", 120_000, adapterRolled);
            await core.createNamespacedPod({ namespace: NS, body: onNode(nodes[0], meshPod("before-change", appContainer("server"))) });
            const rulesBefore = (await waitRunning(NS, "before-change", 120_000)).metadata?.annotations?.[MARK.rules] ?? assert.fail("marked");
            const small = { "sidecar.istio.io/proxyCPU": "10m", "sidecar.istio.io/proxyMemory": "32Mi" };
            for (const [i, { namespace, name }] of names.entries()) {
              await core.createNamespacedPod({ namespace, body: meshPod(name, appContainer("server"), { annotations: small }) });
              // Each replica's kubelet refreshes the mounted ConfigMap on its own schedule.
              if (i === 5) await patchConfigMap(cp, system, POLICY_CONFIGMAP, { [POLICY_KEY]: policyAfter });
            }
            const marked = new Map<string, string>();
            for (const { namespace, name } of names) {
              const p = await waitRunning(namespace, name, 300_000);
              assert.equal(p.metadata?.annotations?.[MARK.status], STATUS_INITIALIZED, name);
              marked.set(name, p.metadata.annotations[MARK.rules] ?? "");
            }
            const replicas = await replicasOf(revision);
            const logOf = (p: k8s.V1Pod): string => nodeOf(p).containerLog(podRef(p), "decision");
            await waitFor("every replica reloaded the new policy", 150_000, async () =>
              (await replicasOf(revision)).every((p) => /"to":"replicas-test@sha256:[0-9a-f]+"[^\n]*"msg":"policy reloaded"/.test(logOf(p))),
            );
            await core.createNamespacedPod({ namespace: NS, body: onNode(nodes[1] ?? nodes[0], meshPod("after-change", appContainer("server"))) });
            const rulesAfter = (await waitRunning(NS, "after-change", 120_000)).metadata?.annotations?.[MARK.rules] ?? assert.fail("marked");
            assert.notEqual(rulesAfter, rulesBefore, "the new policy's rules differ");

            const dispatched = replicas.map((p) => logOf(p).match(/"name":"replica-\d+"[^\n]*"msg":"dispatched: applied"/g)?.length ?? 0);
            assert.ok(
              dispatched.filter((n) => n > 0).length >= 2,
              `the burst was spread over the replicas (pods dispatched by each: ${dispatched.join(", ")})`,
            );
            // Every apply of a pod, by whichever node-runner, named the rules of its mark: the old policy's or the new.
            const rulesOf = await rulesApplied(s(), system, "replica-", namespaces);
            for (const { name } of names) {
              assert.deepEqual([...(rulesOf.get(name) ?? [])], [marked.get(name)], `${name}: the rules of its mark, and no other`);
              assert.ok([rulesBefore, rulesAfter].includes(marked.get(name) ?? ""), `${name}: the old policy's rules or the new`);
            }
            const conflicts = replicas.map((p) => logOf(p).match(/"reason":"initialized-with-other-rules"/g)?.length ?? 0).reduce((a, b) => a + b, 0);
            const byPolicy = [rulesBefore, rulesAfter].map((r) => names.filter(({ name }) => marked.get(name) === r).length);
            console.log(
              `replicas: pods dispatched by each ${dispatched.join(", ")}; ${String(byPolicy[0])} pods with the old rules, ${String(byPolicy[1])} with the new; ${String(conflicts)} applies refused initialized-with-other-rules`,
            );
          } finally {
            await patchConfigMap(cp, system, POLICY_CONFIGMAP, { [POLICY_KEY]: policyBefore });
            await custom.patchNamespacedCustomObject({ ...source, body: { spec: { namespaceSelector: { matchExpressions: null } } } }, mergePatch);
            await minScale("1");
            for (const { namespace, name } of names) await core.deleteNamespacedPod({ namespace, name, gracePeriodSeconds: 0 }).catch(() => undefined);
            for (const name of ["before-change", "after-change"])
              await core.deleteNamespacedPod({ namespace: NS, name, gracePeriodSeconds: 0 }).catch(() => undefined);
            await waitFor("the adapter rolled back to one watch", 120_000, adapterRolled);
            // The tests that follow read the function's one pod: the other Revisions' pods go once Knative has scaled them to zero.
            await waitFor("one replica of the newest Revision, and no other function pod", 300_000, async () => {
              const newest = await readyRevision();
              const fnPods = (await core.listNamespacedPod({ namespace: system, labelSelector: "serving.knative.dev/service=podnet-decision" })).items;
              return (
                newest !== rolledFrom &&
                fnPods.length === 1 &&
                fnPods[0]?.metadata?.labels?.["serving.knative.dev/revision"] === newest &&
                (await replicasOf(newest)).length === 1
              );
            });
          }
        });

        test("Knative's webhooks admit every Knative object the chart renders, for each platform and delivery value (created through admission, dry-run)", async () => {
          const { cp } = s();
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          const admitted: string[] = [];
          for (const openshift of [false, true]) {
            for (const variant of ["direct", "broker"]) {
              const rendered = execFileSync(
                BIN.helm,
                [
                  "template",
                  "podnet",
                  path.join(root, "charts/podnet"),
                  "--namespace",
                  system,
                  "--set",
                  `platform.openshift=${String(openshift)}`,
                  "--set",
                  `eventing.delivery=${variant}`,
                ],
                { encoding: "utf8" },
              );
              for (const doc of k8s.loadAllYaml(rendered) as (k8s.KubernetesObject | null)[]) {
                const [group, version] = (doc?.apiVersion ?? "").split("/");
                if (doc === null || group === undefined || version === undefined || !group.endsWith("knative.dev")) continue;
                // Another name beside the installed object; dry-run: Knative's mutating and validating webhooks run, nothing is stored.
                const body = { ...doc, metadata: { ...doc.metadata, name: `${doc.metadata?.name ?? ""}-admit` } };
                const plural = `${(doc.kind ?? "").toLowerCase()}s`;
                await custom.createNamespacedCustomObject({ group, version, namespace: system, plural, body, dryRun: "All" }).catch((err: unknown) => {
                  throw new Error(`${doc.kind ?? "?"}/${doc.metadata?.name ?? "?"} (openshift=${String(openshift)}, ${variant}) refused: ${String(err)}`);
                });
                admitted.push(`${doc.kind ?? "?"}/${doc.metadata?.name ?? "?"}`);
              }
            }
          }
          assert.deepEqual([...new Set(admitted)].sort(), [
            "ApiServerSource/podnet-pods",
            "Broker/podnet",
            "PingSource/podnet-resync",
            "Service/podnet-decision",
            "Trigger/podnet-pod-events",
            "Trigger/podnet-resync",
          ]);
        });

        test("without sink.audience (the sources before the fix) Knative gives the adapter no audience: it would send no token, and the function refuses every event", async () => {
          const { cp } = s();
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          const source = (await custom.getNamespacedCustomObject({
            group: "sources.knative.dev",
            version: "v1",
            namespace: system,
            plural: "apiserversources",
            name: "podnet-pods",
          })) as {
            spec: { sink: { audience?: string } };
          };
          const { audience: _, ...sink } = source.spec.sink;
          await custom.createNamespacedCustomObject({
            group: "sources.knative.dev",
            version: "v1",
            namespace: system,
            plural: "apiserversources",
            body: { apiVersion: "sources.knative.dev/v1", kind: "ApiServerSource", metadata: { name: "no-audience" }, spec: { ...source.spec, sink } },
          });
          let env: Record<string, string> = {};
          await waitFor("Knative's adapter for the source without an audience", 60_000, async () => {
            env = await adapterEnv(cp, system, "no-audience").catch(() => ({}));
            return env.K_SINK !== undefined;
          });
          assert.equal(env.K_SINK, `http://podnet-decision.${system}.svc.cluster.local`);
          assert.equal(env.K_AUDIENCE, undefined, "no audience, so no token");
          // Its adapter running, a mesh pod's events reach the function from it without a token: refused.
          const { core, meshPod, appContainer } = s();
          await waitFor("the audience-less adapter's pod Ready", 60_000, async () =>
            (await core.listNamespacedPod({ namespace: system, labelSelector: "eventing.knative.dev/sourceName=no-audience" })).items.some((p) =>
              p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
            ),
          );
          await core.createNamespacedPod({ namespace: NS, body: meshPod("seen-without-token", appContainer("server")) });
          await waitFor("the function refused the token-less events", 60_000, async () => functionLogMatches(s(), /refused: sender not authenticated/));
          await custom.deleteNamespacedCustomObject({
            group: "sources.knative.dev",
            version: "v1",
            namespace: system,
            plural: "apiserversources",
            name: "no-audience",
          });
        });

        // README, The incident switch: the CLI edits the ConfigMap Knative's Revision mounts; the
        // kubelet updates the mount, the function reloads it and releases what waits.
        test("pnc fail-open on: the function, its policy a mounted ConfigMap, releases a new mesh pod without rules (its waiter says why); doctor warns; off: pods are programmed again", async () => {
          const { cp, core, meshPod, appContainer, waitRunning, nodes } = s();
          const kubeconfig = cp.writeKubeconfig("ops", cp.adminToken);
          const ops = (...args: string[]) => pnc(kubeconfig, ...args, "-n", system);
          const on = ops("fail-open", "on");
          assert.equal(on.status, 0, on.stderr);
          assert.match(on.stdout, /mode enforce → fail-open/);
          try {
            await waitFor("the function reloaded the policy: fail-open", 150_000, () => functionLogMatches(s(), /"mode":"fail-open","msg":"policy reloaded"/));
            await core.createNamespacedPod({ namespace: NS, body: onNode(nodes[0], meshPod("during-incident", appContainer("server"))) });
            const pod = await waitRunning(NS, "during-incident", 120_000);
            const reason = "the policy's incident switch is on (mode: fail-open)";
            assert.deepEqual(readMark(pod.metadata?.annotations ?? {}), { status: STATUS_SKIPPED, reason });
            const waiter = pod.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER)?.state?.terminated;
            assert.deepEqual([waiter?.exitCode, waiter?.message?.trim()], [0, `not meshed: ${reason}`]);
            const saved = execFileSync("nsenter", [`--net=/proc/${String(podPids(pod)[0] ?? 0)}/ns/net`, "iptables-save"], { encoding: "utf8" });
            assert.doesNotMatch(saved, /ISTIO_/);
            const doctor = ops("doctor", "--json");
            assert.equal(doctor.status, 1, doctor.stderr);
            assert.match(doctor.stdout, /"check": "policy",\s+"severity": "warning",\s+"detail": "the incident switch is on \(mode fail-open\)/);
          } finally {
            const off = ops("fail-open", "off");
            assert.equal(off.status, 0, off.stderr);
            assert.match(off.stdout, /mode fail-open → enforce/);
          }
          await waitFor("the function reloaded the policy: enforce", 150_000, () => functionLogMatches(s(), /"mode":"enforce","msg":"policy reloaded"/));
          await core.createNamespacedPod({ namespace: NS, body: onNode(nodes[0], meshPod("after-incident", appContainer("server"))) });
          const after = await waitRunning(NS, "after-incident", 120_000).catch(async (err: unknown) => {
            const fns = await core.listNamespacedPod({ namespace: system, labelSelector: "serving.knative.dev/service=podnet-decision" });
            const logs = fns.items.map(
              (p) => `${p.metadata?.name ?? ""}:\n${s().nodeOf(p).containerLog(podRef(p), "decision").split("\n").slice(-40).join("\n")}`,
            );
            throw new Error(`${String(err)}\nthe function's log:\n${logs.join("\n")}`);
          });
          assert.equal(after.metadata?.annotations?.[MARK.status], STATUS_INITIALIZED);
          for (const name of ["during-incident", "after-incident"]) await core.deleteNamespacedPod({ namespace: NS, name, gracePeriodSeconds: 0 });
        });

        // README, Certificates: the chart's CronJob command, run three times at once (it waits 10 minutes between steps).
        test("certificates renew with nothing restarted: pnc keys renew rotates to a new CA and certificate (trusted, served, pruned); the function and the node-runners follow their mounts, and mesh pods are programmed after each step", async () => {
          const { cp, core, meshPod, appContainer, waitRunning, nodes, cluster } = s();
          const kubeconfig = cp.writeKubeconfig("renew", cp.adminToken);
          const renew = (before: string) => {
            const r = pnc(kubeconfig, "keys", "renew", "-n", system, "--renew-before", before, "--step-after", "0s");
            assert.equal(r.status, 0, r.stderr);
            return r.stdout;
          };
          const pods = async (selector: string) =>
            (await core.listNamespacedPod({ namespace: system, labelSelector: selector })).items
              .filter((p) => p.metadata?.deletionTimestamp === undefined)
              .map((p) => `${p.metadata?.name ?? ""}:${String(p.status?.containerStatuses?.reduce((n, c) => n + c.restartCount, 0) ?? 0)}`)
              .sort();
          const before = [...(await pods(RUNNER_LABEL)), ...(await pods("serving.knative.dev/service=podnet-decision"))];
          /** The fingerprint of the certificate a node-runner serves, seen from the cluster's network. */
          const served = (ip: string): string =>
            execFileSync(
              "sh",
              [
                "-c",
                `ip netns exec ${cluster.network.fabricNetns} openssl s_client -connect ${ip}:19443 -servername ${NODE_RUNNER_SERVER_NAME} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256`,
              ],
              { encoding: "utf8" },
            ).trim();
          const secretFingerprint = async (): Promise<string> => {
            const secret = await core.readNamespacedSecret({ namespace: system, name: "podnet-node-runner-tls" });
            return `sha256 Fingerprint=${new X509Certificate(Buffer.from(secret.data?.["tls.crt"] ?? "", "base64")).fingerprint256}`;
          };
          const programmed = async (name: string): Promise<void> => {
            await core.createNamespacedPod({ namespace: NS, body: onNode(nodes[1], meshPod(name, appContainer("server"))) });
            assert.equal((await waitRunning(NS, name, 120_000)).metadata?.annotations?.[MARK.status], STATUS_INITIALIZED, name);
            await core.deleteNamespacedPod({ namespace: NS, name, gracePeriodSeconds: 0 });
          };
          const old = await secretFingerprint();

          assert.match(renew("100000d"), /^pnc keys renew: start: /);
          await waitFor("the function trusts both CAs", 150_000, () => functionLogMatches(s(), /"certificates":2,"msg":"node-runner CA reloaded"/));
          for (const node of nodes) assert.equal(served(node.ip), old, "the runners still serve the old certificate");

          assert.match(renew("100000d"), /^pnc keys renew: swap: /);
          const renewed = await secretFingerprint();
          assert.notEqual(renewed, old);
          await waitFor("every node-runner serves the new certificate", 150_000, () => nodes.every((node) => served(node.ip) === renewed));
          await programmed("after-swap");

          assert.match(renew("100000d"), /^pnc keys renew: prune: /);
          await waitFor("the function trusts the new CA only", 150_000, () => functionLogMatches(s(), /"certificates":1,"msg":"node-runner CA reloaded"/));
          await programmed("after-prune");
          assert.match(renew("30d"), /^pnc keys renew: nothing to do: the certificate is valid until/);

          // Nothing restarted: the same pods, no container restarts.
          assert.deepEqual([...(await pods(RUNNER_LABEL)), ...(await pods("serving.knative.dev/service=podnet-decision"))], before);
        });

        // README, Monitoring: what the chart's PodMonitors name, followed as Prometheus follows it.
        test("monitoring: each node-runner answers the scrape its PodMonitor describes (HTTPS to the pod's address, the CA, server name and scraper token it names; 401 without the token), the function at its PodMonitor's relabelled address; both pages pass promtool check metrics", async () => {
          const { cp, core, cluster } = s();
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          type Endpoint = {
            port?: string;
            tlsConfig?: { ca: { configMap: { name: string; key: string } }; serverName: string };
            authorization?: { credentials: { name: string; key: string } };
            relabelings?: { sourceLabels?: string[]; regex?: string; replacement?: string; targetLabel?: string; action?: string }[];
          };
          const podMonitor = async (name: string) =>
            (await custom.getNamespacedCustomObject({ group: "monitoring.coreos.com", version: "v1", namespace: system, plural: "podmonitors", name })) as {
              spec: { selector: { matchLabels: Record<string, string> }; podMetricsEndpoints: Endpoint[] };
            };
          const selected = async (selector: Record<string, string>) =>
            (
              await core.listNamespacedPod({
                namespace: system,
                labelSelector: Object.entries(selector)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(","),
              })
            ).items.filter((p) => p.status?.phase === "Running" && p.metadata?.deletionTimestamp === undefined);
          const inFabric = (args: string[]) =>
            spawnSync("ip", ["netns", "exec", cluster.network.fabricNetns, "curl", "-sS", "--max-time", "10", ...args], { encoding: "utf8" });
          const promtoolProblems = (page: string): string[] =>
            spawnSync(BIN.promtool, ["check", "metrics"], { input: page, encoding: "utf8" })
              .stderr.split("\n")
              .filter((line) => line.trim() !== "" && !/nodejs_active_(handles|requests|resources)_total non-counter/.test(line));

          const runners = await podMonitor("podnet-node-runner");
          const ep = runners.spec.podMetricsEndpoints[0] ?? assert.fail("an endpoint");
          const tls = ep.tlsConfig ?? assert.fail("tlsConfig");
          const credentials = ep.authorization?.credentials ?? assert.fail("authorization");
          let token = "";
          await waitFor("the scraper's token in its Secret", 60_000, async () => {
            const secret = await core.readNamespacedSecret({ namespace: system, name: credentials.name });
            token = Buffer.from(secret.data?.[credentials.key] ?? "", "base64").toString("utf8");
            return token !== "";
          });
          const caFile = path.join(cluster.dir, "metrics-ca.crt");
          writeFileSync(caFile, (await core.readNamespacedConfigMap({ namespace: system, name: tls.ca.configMap.name })).data?.[tls.ca.configMap.key] ?? "");
          const runnerPods = await selected(runners.spec.selector.matchLabels);
          assert.equal(runnerPods.length, 2, "one runner per node");
          for (const pod of runnerPods) {
            const port = pod.spec?.containers[0]?.ports?.find((p) => p.name === ep.port)?.containerPort ?? assert.fail(`a port named ${ep.port ?? ""}`);
            const url = `https://${tls.serverName}:${String(port)}/metrics`;
            const resolve = `${tls.serverName}:${String(port)}:${pod.status?.podIP ?? ""}`;
            const page = inFabric(["--fail", "--cacert", caFile, "--resolve", resolve, "-H", `Authorization: Bearer ${token}`, url]);
            assert.equal(page.status, 0, page.stderr);
            assert.match(page.stdout, /^podnet_node_runner_tls_certificate_not_after_seconds \d+/m);
            assert.deepEqual(promtoolProblems(page.stdout), []);
            const anonymous = inFabric(["-o", "/dev/null", "-w", "%{http_code}", "--cacert", caFile, "--resolve", resolve, url]);
            assert.equal(anonymous.stdout, "401");
          }

          const fn = await podMonitor("podnet-decision");
          const relabel = fn.spec.podMetricsEndpoints[0]?.relabelings ?? [];
          const keep = relabel.find((r) => r.action === "keep");
          const address = relabel.find((r) => r.targetLabel === "__address__") ?? assert.fail("an __address__ relabelling");
          const fnPods = await selected(fn.spec.selector.matchLabels);
          assert.ok(fnPods.length > 0);
          for (const pod of fnPods) {
            // Prometheus' pod discovery: one target per declared container port; the relabelling keeps the function's and moves it to the metrics port.
            const container = pod.spec?.containers.find((c) => new RegExp(`^(?:${keep?.regex ?? ""})$`).test(c.name)) ?? assert.fail("the kept container");
            const declared = `${pod.status?.podIP ?? ""}:${String(container.ports?.[0]?.containerPort ?? 0)}`;
            const target = declared.replace(new RegExp(`^(?:${address.regex ?? ""})$`), (address.replacement ?? "").replaceAll("${1}", "$1"));
            assert.notEqual(target, declared);
            const page = inFabric(["--fail", `http://${target}/metrics`]);
            assert.equal(page.status, 0, page.stderr);
            assert.match(page.stdout, /^podnet_function_policy_info\{id="[^"]+",mode="enforce"\} 1/m);
            assert.deepEqual(promtoolProblems(page.stdout), []);
          }
        });

        // pnc doctor on the live install, healthy and with faults injected one at a time (each
        // put back before the next): each named, with its fix and the exit code for scripts.
        // Last of this variant: turning Knative's OIDC off and on makes it re-create the sources'
        // OIDC ServiceAccounts, and their adapters keep sending tokens of the old ones (same name,
        // another UID) that the TokenReview refuses until those expire. Tests after it would wait
        // for events that are refused.
        test("pnc doctor: all ok on the healthy install (exit 0); OIDC off, a node without a runner, an injector without the template each reported as an error (exit 2)", async () => {
          const { cp, core, nodes } = s();
          const kubeconfig = cp.writeKubeconfig("doctor", cp.adminToken);
          const doctor = (): { code: number | null; findings: { check: string; severity: string; detail: string }[] } => {
            const r = pnc(kubeconfig, "doctor", "-n", system, "--json");
            assert.ok(r.status !== null && r.status <= 2, r.stderr);
            return { code: r.status, findings: JSON.parse(r.stdout) as { check: string; severity: string; detail: string }[] };
          };
          const problems = (f: ReturnType<typeof doctor>) => f.findings.filter((x) => x.severity !== "ok").map((x) => `${x.severity} ${x.check}: ${x.detail}`);
          const expectError = async (what: string, pattern: RegExp): Promise<void> => {
            let last = doctor();
            await waitFor(
              `pnc doctor reports ${what}`,
              90_000,
              () => {
                last = doctor();
                return last.code === 2 && problems(last).some((p) => pattern.test(p));
              },
              undefined,
              () => problems(last).join("\n"),
            );
          };
          const healthy = async (): Promise<void> => {
            let last = doctor();
            await waitFor(
              "pnc doctor: all ok",
              90_000,
              () => {
                last = doctor();
                return last.code === 0;
              },
              undefined,
              () => problems(last).join("\n"),
            );
          };
          await healthy();

          await patchConfigMap(cp, "knative-eventing", "config-features", { "authentication-oidc": "disabled" });
          await expectError("OIDC off", /^error knative oidc: .*authentication-oidc is disabled/);
          await patchConfigMap(cp, "knative-eventing", "config-features", { "authentication-oidc": "enabled" });

          const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
          const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);
          const onlyFirst = { spec: { template: { spec: { nodeSelector: { "kubernetes.io/hostname": nodes[0]?.name ?? "" } } } } };
          await apps.patchNamespacedDaemonSet({ namespace: system, name: "podnet-node-runner", body: onlyFirst }, merge);
          await expectError("a node without a runner", new RegExp(`^error node-runners: no Ready node-runner on 1 of 2 node\\(s\\): ${nodes[1]?.name ?? ""}`));
          const back = { spec: { template: { spec: { nodeSelector: { "kubernetes.io/hostname": null } } } } };
          await apps.patchNamespacedDaemonSet({ namespace: system, name: "podnet-node-runner", body: back }, merge);

          const injector = await core.readNamespacedConfigMap({ namespace: "istio-system", name: "istio-sidecar-injector" });
          const config = injector.data?.config ?? "";
          const withoutTemplate = config.replace(/^(\s+)podnet:/m, "$1podnet-removed:");
          assert.notEqual(withoutTemplate, config);
          await core.patchNamespacedConfigMap(
            { namespace: "istio-system", name: "istio-sidecar-injector", body: { data: { config: withoutTemplate } } },
            merge,
          );
          try {
            await expectError("an injector without the template", /^error istio istio-sidecar-injector: its injector has no podnet template/);
          } finally {
            await core.patchNamespacedConfigMap({ namespace: "istio-system", name: "istio-sidecar-injector", body: { data: { config } } }, merge);
          }
          await healthy();
        });
      }

      if (delivery === "broker") {
        test("a Trigger without subscriber.audience (the Triggers before the fix): Knative's filter delivers without a token, and the function refuses it", async () => {
          const { cp } = s();
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          const trigger = { group: "eventing.knative.dev", version: "v1", namespace: system, plural: "triggers" };
          await custom.createNamespacedCustomObject({
            ...trigger,
            body: {
              apiVersion: "eventing.knative.dev/v1",
              kind: "Trigger",
              metadata: { name: "no-audience" },
              spec: {
                broker: "podnet",
                filter: { attributes: { type: "dev.knative.sources.ping" } },
                subscriber: { ref: { apiVersion: "serving.knative.dev/v1", kind: "Service", name: "podnet-decision" } },
              },
            },
          });
          let made: { status?: { subscriberUri?: string; subscriberAudience?: string } } = {};
          await waitFor("Knative resolved the Trigger's subscriber", 60_000, async () => {
            made = (await custom.getNamespacedCustomObject({ ...trigger, name: "no-audience" })) as typeof made;
            return made.status?.subscriberUri !== undefined;
          });
          assert.equal(made.status?.subscriberAudience, undefined, "Knative gives the Trigger no audience: Serving publishes none");
          // The next resync ping reaches the function through this Trigger too, without a token.
          await waitFor("the function refused the Trigger's token-less delivery", 150_000, async () =>
            functionLogMatches(s(), /"reason":"missing-token"[^\n]*"msg":"refused: sender not authenticated"/),
          );
          await custom.deleteNamespacedCustomObject({ ...trigger, name: "no-audience" });
        });
      }
    },
  );
}
