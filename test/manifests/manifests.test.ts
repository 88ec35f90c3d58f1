// The deployment manifests: every file parses, the kustomize overlays render, and on the real
// API server (with Knative's CRDs from its Go modules) everything is accepted.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { generateKeys } from "../../cli/keys.ts";
import { generateTls, tlsManifests } from "../../cli/tls.ts";
import { parsePolicy } from "../../functions/policy.ts";
import { BIN, missingBinariesReason } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { controlPlaneForSuite } from "../support/suite.ts";

const root = path.resolve(import.meta.dirname, "../..");
const missing = missingBinariesReason();

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((entry) => {
    const p = path.join(dir, entry);
    if (statSync(p).isDirectory()) return yamlFiles(p);
    return p.endsWith(".yaml") ? [p] : [];
  });
}

const kustomize = (dir: string): string => execFileSync(BIN.kustomize, ["build", path.join(root, dir)], { encoding: "utf8" });

describe("manifests", () => {
  // The injection template is a Go template for Istio's injector (tested in test/waiter).
  const files = [...yamlFiles(path.join(root, "config")), ...yamlFiles(path.join(root, "eventing"))].filter((f) => !f.includes(`${path.sep}istio${path.sep}`));
  for (const file of files) {
    test(`${path.relative(root, file)} parses`, () => {
      const docs = parseAllDocuments(readFileSync(file, "utf8"));
      assert.ok(Array.isArray(docs) && docs.length > 0);
      for (const d of docs) assert.deepEqual(d.errors, [], path.relative(root, file));
    });
  }
  test("the policy in the ConfigMap and the example policy are valid policies", () => {
    const cm = parseAllDocuments(readFileSync(path.join(root, "config/function/policy.configmap.yaml"), "utf8"))[0]?.toJS() as {
      data: { "policy.yaml": string };
    };
    assert.equal(parsePolicy(cm.data["policy.yaml"]).document.mode, "enforce");
    parsePolicy(readFileSync(path.join(root, "examples/policy.yaml"), "utf8"));
  });
});

describe("manifests on the real API server [needs control plane]", skipUnlessCI(missing), () => {
  const controlPlane = controlPlaneForSuite(missing, { crds: true });

  test("the overlays render with kustomize", () => {
    const kinds = (text: string) => [...text.matchAll(/^kind: (\w+)$/gm)].map((m) => m[1]).sort();
    const kubernetes = kinds(kustomize("config/overlays/kubernetes"));
    for (const kind of [
      "DaemonSet",
      "ApiServerSource",
      "PingSource",
      "Service",
      "ValidatingAdmissionPolicy",
      "ValidatingAdmissionPolicyBinding",
      "Namespace",
      "ConfigMap",
    ]) {
      assert.ok(kubernetes.includes(kind), `kubernetes overlay has a ${kind}`);
    }
    const openshift = kinds(kustomize("config/overlays/openshift"));
    assert.deepEqual(
      openshift.filter((k) => !kubernetes.includes(k)),
      ["SecurityContextConstraints"],
    );
    assert.match(kustomize("eventing/broker"), /kind: Broker\n[\s\S]*kind: Trigger/);
  });

  test("the kubernetes overlay, the Broker variant and generated keys are accepted", async () => {
    const created = await controlPlane().applyYaml(kustomize("config/overlays/kubernetes"));
    assert.ok(created.includes("DaemonSet/podnet-node-runner"));
    assert.ok(created.includes("Service/podnet-decision"));
    assert.ok(created.includes("ApiServerSource/podnet-pods"));
    const broker = await controlPlane().applyYaml(kustomize("eventing/broker"));
    assert.ok(broker.includes("Broker/podnet") && broker.includes("Trigger/podnet-pod-events"));
    const keys = generateKeys("podnet-system");
    assert.deepEqual(await controlPlane().applyYaml(keys.configMap), ["ConfigMap/podnet-public-keys"]);
    assert.deepEqual(await controlPlane().applyYaml(keys.secret), ["Secret/podnet-signing-keys"]);
    const tls = tlsManifests("podnet-system", generateTls());
    assert.deepEqual(await controlPlane().applyYaml(tls.secret), ["Secret/podnet-node-runner-tls"]);
    assert.deepEqual(await controlPlane().applyYaml(tls.configMap), ["ConfigMap/podnet-node-runner-ca"]);
  });

  test("the node-critical quota admits a node-runner on every node of a large cluster (100 here; it once stopped at 64)", async () => {
    const cp = controlPlane();
    await cp.applyYaml(readFileSync(path.join(root, "config/node-runner/resourcequota.yaml"), "utf8"));
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    // No quota controller runs here: its status is set as the controller sets it (hard from the spec).
    const shipped = await core.readNamespacedResourceQuota({ name: "podnet-node-critical", namespace: "podnet-system" });
    await core.replaceNamespacedResourceQuotaStatus({
      name: "podnet-node-critical",
      namespace: "podnet-system",
      body: { ...shipped, status: { hard: shipped.spec?.hard ?? {}, used: { pods: "0" } } },
    });
    for (let node = 0; node < 100; node++) {
      await core.createNamespacedPod({
        namespace: "podnet-system",
        body: {
          metadata: { name: `podnet-node-runner-${node}` },
          spec: { nodeName: `node-${node}`, priorityClassName: "system-node-critical", containers: [{ name: "node-runner", image: "example/node-runner" }] },
        },
      });
    }
    const quota = await core.readNamespacedResourceQuota({ name: "podnet-node-critical", namespace: "podnet-system" });
    assert.equal(quota.status?.used?.pods, "100");
  });
});
