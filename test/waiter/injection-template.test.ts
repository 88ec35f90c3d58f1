// The Istio injection template in config/istio/ against Pod Security `restricted`, enforced for
// real by the kube-apiserver's PodSecurity admission: a pod as Istio injects it (CNI mode)
// with the template merged in is admitted; the same pod with istio-init (NET_ADMIN) is not.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parse as parseYaml } from "yaml";
import { missingBinariesReason, startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";

const root = path.resolve(import.meta.dirname, "../..");
const missing = missingBinariesReason();

interface Container {
  name: string;
  $patch?: string;
  [key: string]: unknown;
}
interface TemplateSpec {
  spec: { securityContext: Record<string, unknown>; initContainers: Container[]; "$setElementOrder/initContainers": { name: string }[] };
}

/** The template with Istio's template expressions replaced by their defaults. */
function renderTemplate(): TemplateSpec {
  const text = readFileSync(path.join(root, "config/istio/podnet-injection-template.yaml"), "utf8")
    .replace(/\{\{ annotation \.ObjectMeta `[^`]+` `([^`]+)` \}\}/g, "$1")
    .replace(/\{\{ \.Proxy[UG]ID \| default "(\d+)" \}\}/g, "$1");
  assert.doesNotMatch(text, /\{\{/, "every template expression has a default");
  return parseYaml(text) as TemplateSpec;
}

/** The merge Istio's injector performs (strategic merge on initContainers by name). */
function inject(pod: k8s.V1Pod, template: TemplateSpec): k8s.V1Pod {
  const deleted = new Set(template.spec.initContainers.filter((c) => c.$patch === "delete").map((c) => c.name));
  const added = template.spec.initContainers.filter((c) => c.$patch === undefined) as unknown as k8s.V1Container[];
  const order = template.spec["$setElementOrder/initContainers"].map((c) => c.name);
  const kept = (pod.spec?.initContainers ?? []).filter((c) => !deleted.has(c.name) && !order.includes(c.name));
  return {
    ...pod,
    spec: {
      ...(pod.spec ?? { containers: [] }),
      securityContext: { ...pod.spec?.securityContext, ...template.spec.securityContext },
      initContainers: [...order.map((n) => added.find((c) => c.name === n)).filter((c): c is k8s.V1Container => c !== undefined), ...kept],
    },
  };
}

const restrictedContainer = {
  securityContext: { runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] }, seccompProfile: { type: "RuntimeDefault" } },
};

/** A pod as Istio's injector leaves it with CNI on (istio-validation, no istio-init). */
function injectedPod(name: string, initContainers: k8s.V1Container[]): k8s.V1Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, labels: { "security.istio.io/tlsMode": "istio" } },
    spec: {
      initContainers,
      containers: [
        { name: "app", image: "example/app", ...restrictedContainer, securityContext: { ...restrictedContainer.securityContext, runAsUser: 1000 } },
        { name: "istio-proxy", image: "istio/proxyv2", securityContext: { ...restrictedContainer.securityContext, runAsUser: 1337, runAsGroup: 1337, readOnlyRootFilesystem: true, privileged: false }, volumeMounts: [{ name: "istio-podinfo", mountPath: "/etc/istio/pod" }] },
      ],
      volumes: [{ name: "istio-podinfo", downwardAPI: { items: [{ path: "annotations", fieldRef: { fieldPath: "metadata.annotations" } }, { path: "labels", fieldRef: { fieldPath: "metadata.labels" } }] } }],
    },
  };
}

const istioValidation: k8s.V1Container = { name: "istio-validation", image: "istio/proxyv2", args: ["istio-iptables", "--run-validation"], securityContext: { ...restrictedContainer.securityContext, runAsUser: 1337 } };
const istioInit: k8s.V1Container = { name: "istio-init", image: "istio/proxyv2", securityContext: { runAsUser: 0, runAsNonRoot: false, capabilities: { add: ["NET_ADMIN", "NET_RAW"], drop: ["ALL"] } } };

describe("injection template vs Pod Security restricted [needs control plane]", skipUnlessCI(missing), () => {
  let cp: ControlPlane;
  let core: k8s.CoreV1Api;
  const ns = "restricted-apps";

  before(async () => {
    assertAvailable(missing);
    cp = await startControlPlane();
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: ns, labels: { "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest" } } } });
    await cp.ensureNamespace(ns);
  });
  after(async () => {
    await cp.stop();
  });

  test("the template puts the waiter first and removes istio-init and istio-validation", () => {
    const pod = inject(injectedPod("p", [istioInit, istioValidation]), renderTemplate());
    const initContainers = pod.spec?.initContainers ?? [];
    assert.deepEqual(initContainers.map((c) => c.name), ["podnet-wait"]);
    const waiter = initContainers[0];
    assert.ok(waiter !== undefined);
    assert.equal(waiter.securityContext?.runAsUser, 1337);
    assert.deepEqual(waiter.volumeMounts?.map((m) => m.mountPath), ["/etc/istio/pod"]);
    assert.ok(waiter.args?.includes("--annotations=/etc/istio/pod/annotations"));
    assert.equal(waiter.image, "ghcr.io/podnet/waiter:0.1.0");
    const native = inject(injectedPod("n", [{ name: "istio-proxy", image: "istio/proxyv2", restartPolicy: "Always" }]), renderTemplate());
    assert.deepEqual(native.spec?.initContainers?.map((c) => c.name), ["podnet-wait", "istio-proxy"], "before a native-sidecar proxy");
  });

  test("the injected pod is admitted under restricted", async () => {
    const pod = inject(injectedPod("web-1", [istioValidation]), renderTemplate());
    const created = await core.createNamespacedPod({ namespace: ns, body: pod });
    assert.equal(created.metadata?.name, "web-1");
  });

  test("the same pod with istio-init (NET_ADMIN, root) is refused under restricted", async () => {
    await assert.rejects(
      core.createNamespacedPod({ namespace: ns, body: injectedPod("web-2", [istioInit]) }),
      (err: unknown) => err instanceof k8s.ApiException && err.code === 403 && /violates PodSecurity .*restricted:latest.*container .*istio-init.*unrestricted capabilities/s.test(err.message),
    );
  });
});
