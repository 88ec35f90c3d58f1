// Knative on the test cluster as its release installs it: one release's Eventing and Serving (the
// commands build.sh builds from test/controlplane/knative, in local images) from that release's
// own configuration (the config/ YAML of its modules, as `ko resolve` makes the release files:
// every ko:// image replaced by the local image of that command), and Traefik with its Knative
// provider as Serving's ingress (test/controlplane/traefik). The project's own settings come after
// it, as README's install does them (the OIDC feature flag is step 2).
//
// The lab's own setting beside the release's: Serving's ingress class is Traefik's.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import * as k8s from "@kubernetes/client-node";
import { CACHE_DIR, waitFor, type ControlPlane } from "../controlplane/harness.ts";
import { IMAGE_DIR, type RealNode } from "../controlplane/node.ts";

const CONFIG = path.join(CACHE_DIR, "bin", "knative-config");
const TRAEFIK_MANIFEST = path.resolve(import.meta.dirname, "../controlplane/traefik/traefik.yaml");
/** The Knative release the tests install (test/controlplane/knative/go.mod). */
const KNATIVE_MODULES = readFileSync(path.resolve(import.meta.dirname, "../controlplane/knative/go.mod"), "utf8");
export const KNATIVE_VERSION = /knative\.dev\/serving (v\S+)/.exec(KNATIVE_MODULES)?.[1] ?? "unknown";

/** The commands the release's core (and the Broker variant) run, as images.sh names their images. */
const EVENTING_CORE = ["controller", "webhook", "mtping", "apiserver_receive_adapter"];
const EVENTING_BROKER = ["ingress", "filter", "mtchannel_broker", "channel_controller", "channel_dispatcher"];
const SERVING = ["controller", "webhook", "autoscaler", "activator", "queue"];
const IMAGES: readonly string[] = [
  ...[...EVENTING_CORE, ...EVENTING_BROKER].map((c) => `knative-eventing-${c}`),
  ...SERVING.map((c) => `knative-serving-${c}`),
  "traefik",
];

/** undefined when Knative can be installed here; otherwise why not. */
export function missingKnativeReason(): string | undefined {
  const missing = [CONFIG, ...IMAGES.map((i) => path.join(IMAGE_DIR, `${i}.oci.tar`))].filter((p) => !existsSync(p));
  return missing.length === 0
    ? undefined
    : `Knative's images or configuration not built (${missing.map((p) => path.basename(p)).join(", ")}): run test/controlplane/build.sh and test/controlplane/images.sh`;
}

/** `ko://knative.dev/<repo>/cmd/<path>` → the local image images.sh built of that command. */
export function koImage(reference: string): string {
  const match = /^ko:\/\/knative\.dev\/(eventing|serving)\/cmd\/(?:.*\/)?([^/]+)$/.exec(reference);
  if (match === null) throw new Error(`not a Knative command: ${reference}`);
  return `localhost/pnc/knative-${match[1] ?? ""}-${match[2] ?? ""}:test`;
}

/** Every *.yaml under the directories (recursively, in name order, as `ko resolve -R` reads them), images resolved. */
function releaseYaml(dirs: readonly string[], skip: readonly string[] = []): string {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith(".yaml") && !skip.some((s) => full.endsWith(s))) files.push(full);
    }
  };
  for (const dir of dirs) {
    const full = path.join(CONFIG, dir);
    if (full.endsWith(".yaml")) files.push(full);
    else walk(full);
  }
  return files.map((f) => readFileSync(f, "utf8").replace(/ko:\/\/[\w./-]+/g, koImage)).join("\n---\n");
}

/** Merges data into a ConfigMap, retried while the webhook that validates it has no endpoints yet. */
export async function patchConfigMap(cp: ControlPlane, namespace: string, name: string, data: Record<string, string>): Promise<void> {
  const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
  let last = "";
  await waitFor(
    `ConfigMap ${namespace}/${name} patched`,
    30_000,
    async () => {
      try {
        await core.patchNamespacedConfigMap({ namespace, name, body: { data } }, k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch));
        return true;
      } catch (err) {
        last = String(err);
        if (err instanceof k8s.ApiException && err.code === 500 && /failed calling webhook/.test(String(err.body))) return false;
        throw err;
      }
    },
    undefined,
    () => last,
  );
}

/** Resolves once every Deployment in the namespaces has all its replicas available. */
async function deploymentsAvailable(cp: ControlPlane, namespaces: readonly string[], timeoutMs: number): Promise<void> {
  const apps = cp.kubeConfig().makeApiClient(k8s.AppsV1Api);
  let waiting = "";
  await waitFor(
    `Deployments available in ${namespaces.join(", ")}`,
    timeoutMs,
    async () => {
      const pending: string[] = [];
      for (const namespace of namespaces) {
        for (const d of (await apps.listNamespacedDeployment({ namespace })).items) {
          if ((d.status?.availableReplicas ?? 0) < (d.spec?.replicas ?? 1)) pending.push(`${namespace}/${d.metadata?.name ?? "?"}`);
        }
      }
      waiting = pending.join(", ");
      return pending.length === 0;
    },
    undefined,
    () => `still waiting for ${waiting}`,
  );
}

export interface KnativeOptions {
  /** Also the Broker variant's parts: the MT channel-based Broker and the in-memory channel. */
  readonly broker?: boolean;
  readonly log: (line: string) => void;
}

/** Installs Knative Eventing and Serving (and Traefik as Serving's ingress); resolves once every part is available. */
export async function installKnative(cp: ControlPlane, nodes: readonly RealNode[], options: KnativeOptions): Promise<void> {
  const started = Date.now();
  const wanted = IMAGES.filter((i) => options.broker === true || !EVENTING_BROKER.some((c) => i === `knative-eventing-${c}`));
  for (const node of nodes) for (const image of wanted) node.importImage(path.join(IMAGE_DIR, `${image}.oci.tar`));
  // Eventing core, as eventing-core.yaml (config/core; the job sink and request-reply, whose
  // commands are not built here, left out).
  cp.kubectlApply(releaseYaml(["eventing/core"], ["deployments/job-sink.yaml", "deployments/request-reply.yaml"]));
  // Serving core, as serving-crds.yaml and serving-core.yaml (config/core with the Networking and
  // Caching files the release links into it).
  cp.kubectlApply(
    releaseYaml([
      "networking/certificate.yaml",
      "networking/domain-claim.yaml",
      "networking/ingress.yaml",
      "networking/serverlessservice.yaml",
      "caching/image.yaml",
      "serving/core",
      "networking/config-network.yaml",
    ]),
  );
  if (options.broker === true) cp.kubectlApply(releaseYaml(["eventing/channels/in-memory-channel", "eventing/brokers/mt-channel-broker"]));
  cp.kubectlApply(readFileSync(TRAEFIK_MANIFEST, "utf8"));
  await deploymentsAvailable(cp, ["knative-eventing", "knative-serving", "traefik"], 180_000);
  // After Serving's webhook is up: it validates its ConfigMaps (the controller watches them).
  await patchConfigMap(cp, "knative-serving", "config-network", { "ingress-class": "traefik.ingress.networking.knative.dev" });
  options.log(
    `Knative ${KNATIVE_VERSION} (Eventing and Serving${options.broker === true ? ", the MT Broker and in-memory channel" : ""}) and Traefik available, ${((Date.now() - started) / 1000).toFixed(1)} s after their install began`,
  );
}

interface Conditioned {
  readonly status?: {
    readonly conditions?: readonly { readonly type: string; readonly status: string; readonly reason?: string; readonly message?: string }[];
  };
}

/** The project's Knative objects as the chart renders them, by delivery variant: group, version, plural, name. */
function projectObjects(delivery: "direct" | "broker"): [string, string, string, string][] {
  return [
    ["serving.knative.dev", "v1", "services", "podnet-decision"],
    ["sources.knative.dev", "v1", "apiserversources", "podnet-pods"],
    ["sources.knative.dev", "v1", "pingsources", "podnet-resync"],
    ...(delivery === "broker"
      ? ([
          ["eventing.knative.dev", "v1", "brokers", "podnet"],
          ["eventing.knative.dev", "v1", "triggers", "podnet-pod-events"],
          ["eventing.knative.dev", "v1", "triggers", "podnet-resync"],
        ] as [string, string, string, string][])
      : []),
  ];
}

/** Resolves once Knative reports every object of the project Ready (its controllers write that; the tests only read it). */
export async function knativeReady(cp: ControlPlane, delivery: "direct" | "broker", namespace: string, log: (line: string) => void): Promise<void> {
  const started = Date.now();
  const custom = cp.kubeConfig().makeApiClient(k8s.CustomObjectsApi);
  let notReady = "";
  await waitFor(
    "the project's Knative objects Ready",
    180_000,
    async () => {
      const pending: string[] = [];
      for (const [group, version, plural, name] of projectObjects(delivery)) {
        const object = (await custom.getNamespacedCustomObject({ group, version, namespace, plural, name })) as Conditioned;
        const ready = object.status?.conditions?.find((c) => c.type === "Ready");
        if (ready?.status !== "True") pending.push(`${plural}/${name}: ${ready?.reason ?? "no Ready condition"} ${ready?.message ?? ""}`.trim());
      }
      notReady = pending.join("; ");
      return pending.length === 0;
    },
    undefined,
    () => notReady,
  );
  log(`the function's Knative Service and the event sources Ready (${delivery}), ${((Date.now() - started) / 1000).toFixed(1)} s after the chart`);
}
