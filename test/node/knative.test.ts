// The project through Knative's own controllers on a cluster of two real nodes: Knative Eventing
// and Serving of one release installed from its own configuration (test/support/knative.ts),
// Traefik as Serving's ingress, the chart installed as README says with the OIDC feature on.
// Knative's controller makes the ApiServerSource's adapter Deployment with the environment it
// chooses, Serving runs the function as a Revision with its queue-proxy, and mesh pods on both
// nodes are programmed through that chain: adapter pod → Traefik → queue-proxy → function →
// node-runners. Nothing here writes a Knative object's status.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { MARK, STATUS_INITIALIZED } from "../../contract/mark.ts";
import { WAITER_CONTAINER } from "../../functions/decision.ts";
import { waitFor, type ControlPlane } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { missingKnativeReason } from "../support/knative.ts";
import { missingRealNodeReason, onNode, podRef, realNodeStackFixture } from "../support/real-node-stack.ts";

const missing = missingRealNodeReason() ?? missingKnativeReason();
const NS = "shop";
const FUNCTION_AUDIENCE = "serving.knative.dev/service/podnet-system/podnet-decision";
const SOURCE_IDENTITY = "podnet-pods-oidc-sources.knative.dev-apiserversource";

/** The sink, audience and OIDC identity in the environment of the adapter Deployment Knative made for an ApiServerSource. */
async function adapterEnv(cp: ControlPlane, source: string): Promise<Record<string, string>> {
  const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
  const made = await apps.listNamespacedDeployment({ namespace: "podnet-system", labelSelector: `eventing.knative.dev/sourceName=${source}` });
  assert.equal(made.items.length, 1, `one adapter Deployment for ${source}, made by Knative's controller`);
  const env = made.items[0]?.spec?.template.spec?.containers[0]?.env ?? [];
  return Object.fromEntries(env.filter((e) => ["K_SINK", "K_AUDIENCE", "K_OIDC_SERVICE_ACCOUNT"].includes(e.name)).map((e) => [e.name, e.value ?? ""]));
}

for (const delivery of ["direct", "broker"] as const) {
  describe(
    `through Knative's own controllers, ${delivery} delivery [needs root, control plane, node binaries, istiod, Knative and images]`,
    skipUnlessCI(missing),
    () => {
      const s = realNodeStackFixture(missing, `knative ${delivery}`, { namespaces: [NS], knative: { delivery } });

      test("Knative makes the adapter with its sink, that sink's audience and the source's OIDC identity, and runs the function as a Revision with queue-proxy", async () => {
        const { cp, core } = s();
        assert.deepEqual(
          await adapterEnv(cp, "podnet-pods"),
          delivery === "direct"
            ? { K_SINK: "http://podnet-decision.podnet-system.svc.cluster.local", K_AUDIENCE: FUNCTION_AUDIENCE, K_OIDC_SERVICE_ACCOUNT: SOURCE_IDENTITY }
            : {
                K_SINK: "http://broker-ingress.knative-eventing.svc.cluster.local/podnet-system/podnet",
                K_AUDIENCE: "eventing.knative.dev/broker/podnet-system/podnet",
                K_OIDC_SERVICE_ACCOUNT: SOURCE_IDENTITY,
              },
        );
        const fnPods = await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: "serving.knative.dev/service=podnet-decision" });
        assert.ok(fnPods.items.length >= 1, "the function's Revision has a pod");
        assert.deepEqual(fnPods.items[0]?.spec?.containers.map((c) => c.name).sort(), ["decision", "queue-proxy"]);
        if (delivery === "broker") {
          // The Broker's filter delivers with each Trigger's identity, for the audience the Trigger names.
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          for (const name of ["podnet-pod-events", "podnet-resync"]) {
            const trigger = (await custom.getNamespacedCustomObject({
              group: "eventing.knative.dev",
              version: "v1",
              namespace: "podnet-system",
              plural: "triggers",
              name,
            })) as {
              status?: { subscriberAudience?: string; auth?: { serviceAccountName?: string } };
            };
            assert.equal(trigger.status?.subscriberAudience, FUNCTION_AUDIENCE, name);
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

      if (delivery === "direct") {
        test("without sink.audience (the sources before the fix) Knative gives the adapter no audience: it would send no token, and the function refuses every event", async () => {
          const { cp } = s();
          const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
          const source = (await custom.getNamespacedCustomObject({
            group: "sources.knative.dev",
            version: "v1",
            namespace: "podnet-system",
            plural: "apiserversources",
            name: "podnet-pods",
          })) as {
            spec: { sink: { audience?: string } };
          };
          const { audience: _, ...sink } = source.spec.sink;
          await custom.createNamespacedCustomObject({
            group: "sources.knative.dev",
            version: "v1",
            namespace: "podnet-system",
            plural: "apiserversources",
            body: { apiVersion: "sources.knative.dev/v1", kind: "ApiServerSource", metadata: { name: "no-audience" }, spec: { ...source.spec, sink } },
          });
          let env: Record<string, string> = {};
          await waitFor("Knative's adapter for the source without an audience", 60_000, async () => {
            env = await adapterEnv(cp, "no-audience").catch(() => ({}));
            return env.K_SINK !== undefined;
          });
          assert.equal(env.K_SINK, "http://podnet-decision.podnet-system.svc.cluster.local");
          assert.equal(env.K_AUDIENCE, undefined, "no audience, so no token");
          // Its adapter running, a mesh pod's events reach the function from it without a token: refused.
          const { core, meshPod, appContainer, nodeOf } = s();
          await waitFor("the audience-less adapter's pod Ready", 60_000, async () =>
            (await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: "eventing.knative.dev/sourceName=no-audience" })).items.some((p) =>
              p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
            ),
          );
          await core.createNamespacedPod({ namespace: NS, body: meshPod("seen-without-token", appContainer("server")) });
          const fnPod = (await core.listNamespacedPod({ namespace: "podnet-system", labelSelector: "serving.knative.dev/service=podnet-decision" })).items[0];
          assert.ok(fnPod !== undefined);
          await waitFor("the function refused the token-less events", 60_000, () =>
            /refused: sender not authenticated/.test(nodeOf(fnPod).containerLog(podRef(fnPod), "decision")),
          );
          await custom.deleteNamespacedCustomObject({
            group: "sources.knative.dev",
            version: "v1",
            namespace: "podnet-system",
            plural: "apiserversources",
            name: "no-audience",
          });
        });
      }
    },
  );
}
