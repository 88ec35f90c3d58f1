// The Helm chart (charts/podnet) with the real helm: lint, render for each platform, the same
// objects as the kustomize overlays, accepted by the real API server with Knative's CRDs; and
// Istio's own istiod chart with this project's values renders an injector that carries the
// template in CNI mode.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { BIN, CACHE_DIR, missingBinariesReason } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { controlPlaneForSuite } from "../support/suite.ts";

const root = path.resolve(import.meta.dirname, "../..");
const HELM = path.join(CACHE_DIR, "bin", "helm");
const missing = existsSync(HELM) ? missingBinariesReason() : `helm not built (${HELM}): run test/controlplane/build.sh`;

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

const quiet = { encoding: "utf8" as const, stdio: ["ignore", "pipe", "pipe"] as ["ignore", "pipe", "pipe"], maxBuffer: 64 * 1024 * 1024 };
const helm = (...args: string[]): string => execFileSync(HELM, args, quiet);
const chart = (set: string[] = []): string => helm("template", "podnet", path.join(root, "charts/podnet"), "--namespace", "podnet-system", ...set.flatMap((s) => ["--set", s]));
const kustomize = (dir: string): string => execFileSync(BIN.kustomize, ["build", path.join(root, dir)], quiet);

/**
 * Objects by kind/namespace/name, compared as data: YAML spelling aside (0444 or 292), and runs
 * of whitespace in strings as one space (kustomize keeps a blank line in one folded CEL
 * expression that Helm's YAML library drops; neither changes what the expression means).
 */
function objects(text: string): Map<string, K8sObject> {
  const out = new Map<string, K8sObject>();
  for (const doc of parseAllDocuments(text)) {
    const o = doc.toJS() as K8sObject | null;
    if (o === null) continue;
    const normalized = JSON.parse(JSON.stringify(o), (_key, value: unknown) => (typeof value === "string" ? value.replace(/\s+/g, " ").trim() : value)) as K8sObject;
    out.set(`${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`, normalized);
  }
  return out;
}

const raw = (text: string): K8sObject[] =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);

describe("Helm chart [needs control plane]", skipUnlessCI(missing), () => {
  const controlPlane = controlPlaneForSuite(missing, { knativeCrds: true });

  test("helm lint passes", () => {
    assert.match(helm("lint", path.join(root, "charts/podnet")), /1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  test("the chart renders exactly the kustomize overlays' objects (kubernetes and OpenShift)", () => {
    for (const [set, overlay] of [[[], "config/overlays/kubernetes"], [["platform.openshift=true"], "config/overlays/openshift"]] as const) {
      const fromHelm = objects(chart([...set]));
      const fromKustomize = objects(kustomize(overlay));
      assert.deepEqual([...fromHelm.keys()].sort(), [...fromKustomize.keys()].sort(), overlay);
      for (const [key, o] of fromKustomize) assert.deepEqual(fromHelm.get(key), o, `${overlay}: ${key}`);
    }
  });

  test("values reach the objects: images, port, backend, cgroup root, broker delivery, public keys, no GKE quota", () => {
    const rendered = objects(
      chart([
        "images.nodeRunner=registry.example/nr:1",
        "images.decision=registry.example/fn:1",
        "nodeRunner.port=20443",
        "nodeRunner.backend=nftables",
        "nodeRunner.cgroupRoot=/kubelet",
        "eventing.delivery=broker",
        "keys.publicKeys.fn-20261125000000=PEM",
        "platform.nodeCriticalQuota=false",
      ]),
    );
    const ds = JSON.stringify(rendered.get("DaemonSet/podnet-system/podnet-node-runner"));
    for (const needle of ['"image":"registry.example/nr:1"', '"value":"$(HOST_IP):20443"', '"containerPort":20443', '"value":"nftables"', '{"name":"CGROUP_ROOT","value":"/kubelet"}']) assert.ok(ds.includes(needle), needle);
    const fn = JSON.stringify(rendered.get("Service/podnet-system/podnet-decision"));
    assert.ok(fn.includes('"image":"registry.example/fn:1"') && fn.includes('{"name":"NODE_RUNNER_PORT","value":"20443"}'), fn);
    assert.ok(rendered.has("Broker/podnet-system/podnet") && rendered.has("Trigger/podnet-system/podnet-pod-events"));
    assert.match(JSON.stringify(rendered.get("ApiServerSource/podnet-system/podnet-pods")), /"kind":"Broker","name":"podnet"/);
    assert.equal((rendered.get("ConfigMap/podnet-system/podnet-public-keys") as { data?: Record<string, string> } | undefined)?.data?.["fn-20261125000000.pem"], "PEM");
    assert.equal(rendered.has("ResourceQuota/podnet-system/podnet-node-critical"), false);
  });

  test("invalid values are refused with a clear error", () => {
    for (const [set, message] of [["eventing.delivery=kafka", /eventing.delivery must be direct or broker/], ["nodeRunner.backend=ebpf", /nodeRunner.backend must be/]] as const) {
      assert.throws(() => chart([set]), (err: unknown) => message.test(String((err as { stderr?: string }).stderr)));
    }
  });

  test("each platform's rendering is accepted by the real API server with Knative's CRDs", async () => {
    // Server-side dry run: every object fully validated (schemas, CRDs, admission), none kept,
    // so each rendering is judged on its own.
    const client = k8s.KubernetesObjectApi.makeApiClient(controlPlane().kubeConfig());
    await controlPlane().ensureNamespace("podnet-system");
    for (const set of [[], ["eventing.delivery=broker", "keys.publicKeys.fn-1=PEM"], ["platform.openshift=true", "nodeRunner.cgroupRoot=/kubelet"]]) {
      // SecurityContextConstraints is OpenShift's own API: its rendering is checked above.
      const docs = raw(chart(set)).filter((o) => o.kind !== "SecurityContextConstraints" && !(o.kind === "Namespace"));
      for (const doc of docs) {
        await client.create(doc as k8s.KubernetesObject, undefined, "All").catch((err: unknown) => {
          assert.fail(`${set.join(",") || "defaults"}: ${doc.kind}/${doc.metadata.name} refused: ${err instanceof Error ? err.message : String(err)}`);
        });
      }
    }
  });

  test("Istio's own istiod chart with config/istio/istiod-values.yaml: the injector carries the template in CNI mode", () => {
    const istioVersion = /istio\.io\/istio (\S+)/.exec(readFileSync(path.join(root, "test/istio-oracle/go.mod"), "utf8"))?.[1];
    assert.ok(istioVersion !== undefined);
    const moduleDir = execFileSync("go", ["mod", "download", "-json", `istio.io/istio@${istioVersion}`], { ...quiet, cwd: path.join(root, "test/istio-oracle") });
    const dir = (JSON.parse(moduleDir) as { Dir: string }).Dir;
    const out = helm(
      "template", "istiod", path.join(dir, "manifests/charts/istio-control/istio-discovery"), "--namespace", "istio-system",
      "-f", path.join(root, "config/istio/istiod-values.yaml"),
      "--set-file", `sidecarInjectorWebhook.templates.podnet=${path.join(root, "config/istio/podnet-injection-template.yaml")}`,
    );
    const injector = raw(out).find((o) => o.kind === "ConfigMap" && o.metadata.name === "istio-sidecar-injector") as { data: { config: string; values: string } } | undefined;
    assert.ok(injector !== undefined, "the chart renders the injector ConfigMap");
    const values = JSON.parse(injector.data.values) as { pilot: { cni: { enabled: boolean } }; global: { proxy: { seccompProfile: { type: string } } } };
    assert.equal(values.pilot.cni.enabled, true);
    assert.equal(values.global.proxy.seccompProfile.type, "RuntimeDefault");
    const config = parseAllDocuments(injector.data.config)[0]?.toJS() as { defaultTemplates: string[]; templates: Record<string, string> };
    assert.deepEqual(config.defaultTemplates, ["sidecar", "podnet"]);
    assert.equal(config.templates.podnet, readFileSync(path.join(root, "config/istio/podnet-injection-template.yaml"), "utf8"), "the podnet template is among the injector's templates, as written");
  });
});
