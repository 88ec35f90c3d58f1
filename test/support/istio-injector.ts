// Istio's real injector, offline: `istioctl manifest generate` renders Istio's own injector
// configuration (config, values, mesh) with the project's template under
// sidecarInjectorWebhook.templates (CNI mode off, as the README installs it, unless asked), and
// `istioctl kube-inject` runs the injector (its templates, the strategic merge of custom
// templates, reorderPod) on a pod.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseAllDocuments, stringify } from "yaml";
import { CACHE_DIR, missingBinariesReason } from "../controlplane/harness.ts";

const root = path.resolve(import.meta.dirname, "../..");
export const ISTIOCTL = path.join(CACHE_DIR, "bin", "istioctl");

/** undefined when istioctl and the control plane are built; otherwise why not. */
export function missingIstioReason(): string | undefined {
  return existsSync(ISTIOCTL) ? missingBinariesReason() : `istioctl not built (${ISTIOCTL}): run test/controlplane/build.sh`;
}

export interface InjectorFiles {
  readonly dir: string;
  readonly config: string;
  readonly values: string;
  readonly mesh: string;
}

export interface InjectorOptions {
  /** The template (default: config/istio/podnet-injection-template.yaml). */
  readonly template?: string;
  /** Istio's CNI mode (components.cni.enabled; default off). */
  readonly cni?: boolean;
  /** values.global.platform (e.g. openshift). */
  readonly platform?: string;
  /** More values.global.proxy settings. */
  readonly proxy?: Record<string, unknown>;
  /** IstioOperator files given to istioctl in this order (-f each), instead of one built from the options above. */
  readonly operatorFiles?: readonly string[];
}

/** Istio's injector ConfigMaps for an operator with the project's template, written into `dir`; `daemonSets`: what istioctl would install as node agents. */
export function renderInjector(dir: string, options: InjectorOptions = {}): InjectorFiles & { readonly daemonSets: readonly string[] } {
  const operator = {
    apiVersion: "install.istio.io/v1alpha1",
    kind: "IstioOperator",
    spec: {
      components: { cni: { enabled: options.cni ?? false } },
      values: {
        sidecarInjectorWebhook: {
          templates: { podnet: options.template ?? readFileSync(path.join(root, "config/istio/podnet-injection-template.yaml"), "utf8") },
        },
        // Istio's own setting for the proxy's seccomp profile (restricted requires one); images
        // already on the node are used (an istioctl built from the module names proxyv2:latest,
        // which the kubelet would otherwise always pull).
        global: {
          proxy: { seccompProfile: { type: "RuntimeDefault" }, ...options.proxy },
          imagePullPolicy: "IfNotPresent",
          ...(options.platform === undefined ? {} : { platform: options.platform }),
        },
      },
    },
  };
  writeFileSync(path.join(dir, "operator.yaml"), stringify(operator));
  const files = options.operatorFiles ?? [path.join(dir, "operator.yaml")];
  const manifest = execFileSync(ISTIOCTL, ["manifest", "generate", ...files.flatMap((f) => ["-f", f])], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  const daemonSets = parseAllDocuments(manifest)
    .map((d) => d.toJS() as { kind?: string; metadata?: { name?: string } } | null)
    .filter((d) => d?.kind === "DaemonSet")
    .map((d) => d?.metadata?.name ?? "");
  const configMaps = parseAllDocuments(manifest)
    .map((d) => d.toJS() as { kind?: string; metadata?: { name?: string }; data?: Record<string, string> } | null)
    .filter((d) => d?.kind === "ConfigMap");
  const injector = configMaps.find((d) => d?.metadata?.name === "istio-sidecar-injector")?.data;
  const mesh = configMaps.find((d) => d?.metadata?.name === "istio")?.data?.mesh;
  assert.ok(injector?.config !== undefined && injector.values !== undefined && mesh !== undefined, "manifest generate rendered the injector ConfigMaps");
  const written = { dir, config: path.join(dir, "config.yaml"), values: path.join(dir, "values.yaml"), mesh: path.join(dir, "mesh.yaml") };
  writeFileSync(written.config, injector.config);
  writeFileSync(written.values, injector.values);
  writeFileSync(written.mesh, mesh);
  return { ...written, daemonSets };
}

/** The pod as Istio's injector returns it. */
export function kubeInject<P extends { metadata: { name: string } }>(files: InjectorFiles, pod: P): P {
  const input = path.join(files.dir, `${pod.metadata.name}.yaml`);
  writeFileSync(input, stringify({ apiVersion: "v1", kind: "Pod", ...pod }));
  // -r default: offline (without it kube-inject looks for a cluster).
  const out = execFileSync(
    ISTIOCTL,
    ["kube-inject", "-r", "default", "--injectConfigFile", files.config, "--valuesFile", files.values, "--meshConfigFile", files.mesh, "-f", input],
    { encoding: "utf8" },
  );
  const docs = parseAllDocuments(out)
    .map((d) => d.toJS() as P | null)
    .filter((d): d is P => d !== null);
  assert.equal(docs.length, 1, out);
  return docs[0] as P;
}
