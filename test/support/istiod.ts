// Istio's own istiod on the test cluster, installed as README's step 5 says for a cluster with no
// istiod yet: Istio's base chart (its CRDs) and its istiod chart, both from the istio.io/istio
// module the oracle and istioctl are built from (build.sh copies them into the cache), with
// config/istio/istiod-values.yaml and the podnet template. pilot-discovery runs from a local
// image of the binary built from the same module. Its injection webhook then injects pods in
// namespaces labelled istio-injection=enabled (or pods labelled sidecar.istio.io/inject=true) as
// in production, and it publishes the istio-ca-root-cert ConfigMap in every namespace.
//
// The lab's own values beside the project's: local image names (there is no registry), no
// autoscaler, and requests a two-core machine can schedule.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { BIN, CACHE_DIR, waitFor, type ControlPlane } from "../controlplane/harness.ts";
import { IMAGE_DIR, type RealNode } from "../controlplane/node.ts";

const root = path.resolve(import.meta.dirname, "../..");
const CHARTS = path.join(CACHE_DIR, "bin", "istio-charts");
/** Istio's istiod chart, from the module the oracle is built from (its release here: `istiod`). */
export const ISTIOD_CHART = path.join(CHARTS, "istio-discovery");
const ISTIO_CNI_CHART = path.join(CHARTS, "istio-cni");
export const ISTIOD_IMAGE = "localhost/pnc/pilot-discovery:test";
/** Istio's images under the lab's hub and tag: the proxy is `<hub>/proxyv2:<tag>`. */
const HUB = "localhost/pnc";
const TAG = "test";
export const ISTIO_PROXY_IMAGE = `${HUB}/proxyv2:${TAG}`;
const ISTIO_NAMESPACE = "istio-system";

/** undefined when istiod can be installed here; otherwise why not. */
export function missingIstiodReason(): string | undefined {
  const missing = [path.join(CHARTS, "base"), ISTIOD_CHART, path.join(IMAGE_DIR, "pilot-discovery.oci.tar")].filter((p) => !existsSync(p));
  return missing.length === 0
    ? undefined
    : `istiod's charts or image not built (${missing.map((p) => path.basename(p)).join(", ")}): run test/controlplane/build.sh and test/controlplane/images.sh`;
}

/** helm as the lab's Istio installs run it: the cluster's admin, output kept for errors. */
function istioHelm(cp: ControlPlane): (...args: string[]) => string {
  const kubeconfig = cp.writeKubeconfig("helm-istio", cp.adminToken);
  return (...args) => execFileSync(BIN.helm, [...args, "--kubeconfig", kubeconfig], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/**
 * Installs Istio's base and istiod charts; resolves once istiod is Ready and its webhook injects
 * (a dry-run create of a labelled pod comes back with istio-proxy). The proxy's image
 * (ISTIO_PROXY_IMAGE) is the caller's to provide on the nodes.
 */
export async function installIstiod(cp: ControlPlane, nodes: readonly RealNode[], log: (line: string) => void): Promise<void> {
  const started = Date.now();
  for (const node of nodes) node.importImage(path.join(IMAGE_DIR, "pilot-discovery.oci.tar"));
  const helm = istioHelm(cp);
  helm("install", "istio-base", path.join(CHARTS, "base"), "--namespace", ISTIO_NAMESPACE, "--create-namespace", "--wait");
  helm(
    "install",
    "istiod",
    ISTIOD_CHART,
    "--namespace",
    ISTIO_NAMESPACE,
    "-f",
    path.join(root, "config/istio/istiod-values.yaml"),
    "--set-file",
    `sidecarInjectorWebhook.templates.podnet=${path.join(root, "config/istio/podnet-injection-template.yaml")}`,
    "--set",
    `global.hub=${HUB},global.tag=${TAG},image=${ISTIOD_IMAGE},autoscaleEnabled=false,resources.requests.cpu=100m,resources.requests.memory=256Mi`,
  );
  log("istiod installed with Istio's charts; waiting for its webhook");
  const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  let last = "";
  await waitFor(
    "istiod Ready and injecting",
    120_000,
    async () => {
      const pods = await core.listNamespacedPod({ namespace: ISTIO_NAMESPACE, labelSelector: "app=istiod" });
      last = JSON.stringify(pods.items.map((p) => p.status?.containerStatuses?.map((c) => [c.ready, c.state])));
      if (!pods.items.some((p) => p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"))) return false;
      try {
        const names = await injectedContainers(core);
        last = `dry-run pod's containers: ${names.join(",")}`;
        return names.includes("istio-proxy");
      } catch (err) {
        last = String(err);
        return false;
      }
    },
    undefined,
    () => last,
  );
  log(`istiod Ready and its webhook injecting, ${((Date.now() - started) / 1000).toFixed(1)} s after its install began`);
}

/** The init containers and containers, in order, of a labelled pod as the webhook injects it now (a dry-run create). */
async function injectedContainers(core: k8s.CoreV1Api, annotations: Record<string, string> = {}): Promise<string[]> {
  const probe = await core.createNamespacedPod({
    namespace: "default",
    dryRun: "All",
    body: {
      metadata: { name: "istiod-probe", labels: { "sidecar.istio.io/inject": "true" }, annotations },
      spec: { containers: [{ name: "app", image: "probe" }] },
    },
  });
  return [...(probe.spec?.initContainers ?? []), ...(probe.spec?.containers ?? [])].map((c) => c.name);
}

/** Pods injected with Istio's own template only (not the podnet template the lab's istiod adds to every pod). */
export const ISTIO_TEMPLATE_ONLY = { "inject.istio.io/templates": "sidecar" };

/**
 * Istio's own CNI mode on the running lab, as Istio installs it: istiod's injector with CNI mode
 * on (Istio's template then renders istio-validation, pilot-agent's check, instead of
 * istio-init) and Istio's istio-cni chart, whose agent on every node copies the plugin into
 * /opt/cni/bin and chains it into the node's network configuration in /etc/cni/net.d (the
 * node's own, test/controlplane/node.ts). Resolves once every node's configuration names the
 * plugin and the webhook renders istio-validation. `excludeNamespaces`: pods there are not the
 * plugin's (another mode's, in bench:node).
 */
export async function installIstioCni(
  cp: ControlPlane,
  nodes: readonly RealNode[],
  excludeNamespaces: readonly string[],
  log: (line: string) => void,
): Promise<void> {
  const started = Date.now();
  for (const node of nodes) node.importImage(path.join(IMAGE_DIR, "install-cni.oci.tar"));
  const helm = istioHelm(cp);
  helm("upgrade", "istiod", ISTIOD_CHART, "--namespace", ISTIO_NAMESPACE, "--reuse-values", "--set", "cni.enabled=true");
  helm(
    "install",
    "istio-cni",
    ISTIO_CNI_CHART,
    "--namespace",
    ISTIO_NAMESPACE,
    "--set",
    `global.hub=${HUB},global.tag=${TAG},resources.requests.cpu=10m,resources.requests.memory=64Mi`,
    "--set-json",
    `excludeNamespaces=${JSON.stringify(["kube-system", ...excludeNamespaces])}`,
  );
  const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  let last = "";
  await waitFor(
    "istio-cni's plugin chained on every node, and the webhook rendering istio-validation",
    120_000,
    async () => {
      const chained = nodes.filter((n) =>
        readdirSync(path.join(n.dir, "private/etc/cni/net.d")).some((f) =>
          /istio-cni/.test(readFileSync(path.join(n.dir, "private/etc/cni/net.d", f), "utf8")),
        ),
      );
      const names = await injectedContainers(core, ISTIO_TEMPLATE_ONLY);
      last = `chained on ${chained.map((n) => n.name).join(", ") || "no node"}; dry-run pod's containers: ${names.join(",")}`;
      return chained.length === nodes.length && names.includes("istio-validation") && !names.includes("istio-init");
    },
    undefined,
    () => last,
  );
  log(`istio-cni installed with Istio's chart, ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
