// The Helm chart (charts/podnet) with the real helm: lint, render for each platform, the same
// objects as the kustomize overlays, accepted by the real API server with Knative's CRDs; and
// Istio's own istiod chart with this project's values renders an injector that carries the
// template in CNI mode.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createPrivateKey, createPublicKey, sign, verify, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { NODE_RUNNER_SERVER_NAME } from "../../contract/apply-request.ts";
import { BIN, missingBinariesReason } from "../controlplane/harness.ts";
import { skipUnlessCI } from "../support/environment.ts";
import { controlPlaneForSuite } from "../support/suite.ts";

const root = path.resolve(import.meta.dirname, "../..");
const { helm: HELM, kubectl: KUBECTL } = BIN;
const missing = missingBinariesReason();

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

const quiet = { encoding: "utf8" as const, stdio: ["ignore", "pipe", "pipe"] as ["ignore", "pipe", "pipe"], maxBuffer: 64 * 1024 * 1024 };
const helm = (...args: string[]): string => execFileSync(HELM, args, quiet);
const DIGEST = `sha256:${"ab".repeat(32)}`;
/** A value for every image, pull, resource, scheduling and pod value the chart has. */
const EVERY_VALUE = [
  "images.nodeRunner.repository=registry.example:5000/mesh/nr",
  `images.nodeRunner.digest=${DIGEST}`,
  "images.decision.repository=registry.example:5000/mesh/fn",
  "images.decision.tag=2.0.1",
  "images.pullPolicy=Always",
  "images.pullSecrets[0].name=regcred",
  "nodeRunner.resources.requests.cpu=100m",
  "nodeRunner.resources.limits.memory=512Mi",
  "nodeRunner.nodeSelector.pool=mesh",
  "nodeRunner.tolerations[0].key=dedicated",
  "nodeRunner.tolerations[0].operator=Exists",
  "nodeRunner.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
  "nodeRunner.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
  "nodeRunner.priorityClassName=mesh-critical",
  "nodeRunner.updateStrategy.type=OnDelete",
  "nodeRunner.podLabels.team=net",
  "nodeRunner.podLabels.app\\.kubernetes\\.io/name=not-the-selector",
  "nodeRunner.podAnnotations.example\\.com/owner=net",
  "decision.resources.requests.memory=128Mi",
  "decision.podLabels.team=net",
  "keys.resources.limits.memory=300Mi",
  "keys.nodeSelector.pool=system",
  "keys.tolerations[0].operator=Exists",
  // (--set would make the number 5; annotations are strings)
  "--set-string",
  "decision.podAnnotations.autoscaling\\.knative\\.dev/max-scale=5",
];

/** `helm template` with `--set` for each value; a `--set-string` in the list applies to the value after it, `--namespace=<ns>` names the release's. */
const chart = (set: readonly string[] = []): string =>
  helm(
    "template",
    "podnet",
    path.join(root, "charts/podnet"),
    "--namespace",
    set.find((s) => s.startsWith("--namespace="))?.slice("--namespace=".length) ?? "podnet-system",
    ...set.flatMap((s, i) => (s.startsWith("--") ? [] : [set[i - 1] === "--set-string" ? "--set-string" : "--set", s])),
  );
const kustomize = (dir: string): string => execFileSync(BIN.kustomize, ["build", path.join(root, dir)], quiet);

/** Istio's own istiod chart, from the istio.io/istio module the oracle is built from. */
function istiodChart(): string {
  const istioVersion = /istio\.io\/istio (\S+)/.exec(readFileSync(path.join(root, "test/istio-oracle/go.mod"), "utf8"))?.[1];
  assert.ok(istioVersion !== undefined);
  const moduleDir = execFileSync("go", ["mod", "download", "-json", `istio.io/istio@${istioVersion}`], { ...quiet, cwd: path.join(root, "test/istio-oracle") });
  return path.join((JSON.parse(moduleDir) as { Dir: string }).Dir, "manifests/charts/istio-control/istio-discovery");
}

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
    const normalized = JSON.parse(JSON.stringify(o), (_key, value: unknown) =>
      typeof value === "string" ? value.replace(/\s+/g, " ").trim() : value,
    ) as K8sObject;
    out.set(`${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`, normalized);
  }
  return out;
}

/** The labels the chart puts on every object it renders (charts/podnet/templates/_helpers.tpl). */
const RELEASE_LABELS = [
  "app.kubernetes.io/name",
  "app.kubernetes.io/part-of",
  "app.kubernetes.io/instance",
  "app.kubernetes.io/version",
  "app.kubernetes.io/managed-by",
  "helm.sh/chart",
];

/** `o` without the release's labels the kustomize object `like` does not carry (it keeps its own app.kubernetes.io/name, say). */
function withoutReleaseLabels(o: K8sObject, like: K8sObject | undefined): K8sObject {
  const own = (like?.metadata as { labels?: Record<string, string> } | undefined)?.labels ?? {};
  const { labels = {}, ...metadata } = o.metadata as K8sObject["metadata"] & { labels?: Record<string, string> };
  const kept = Object.fromEntries(Object.entries(labels).filter(([key]) => !RELEASE_LABELS.includes(key) || key in own));
  return { ...o, metadata: Object.keys(kept).length === 0 ? metadata : { ...metadata, labels: kept } } as K8sObject;
}

const isHook = (o: K8sObject): boolean => (o.metadata as { annotations?: Record<string, string> }).annotations?.["helm.sh/hook"] !== undefined;

const raw = (text: string): K8sObject[] =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);

describe("Helm chart [needs control plane]", skipUnlessCI(missing), () => {
  const controlPlane = controlPlaneForSuite(missing, { crds: true });

  test("helm lint passes", () => {
    assert.match(helm("lint", path.join(root, "charts/podnet")), /1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  test("the chart renders exactly the kustomize overlays' objects (kubernetes and OpenShift), but the namespace, the key Job's hooks and the release's labels, which every object carries", () => {
    for (const [set, overlay] of [
      [[], "config/overlays/kubernetes"],
      [["platform.openshift=true"], "config/overlays/openshift"],
    ] as const) {
      const rendered = objects(chart([...set]));
      const hooks = [...rendered]
        .filter(([, o]) => isHook(o))
        .map(([key]) => key)
        .sort();
      assert.deepEqual(
        hooks,
        [
          "Job/podnet-system/podnet-keys",
          "Job/podnet-system/podnet-uninstall-check",
          "Role/istio-system/podnet-uninstall-check",
          "Role/podnet-system/podnet-keys",
          "Role/podnet-system/podnet-uninstall-check-runners",
          "RoleBinding/istio-system/podnet-uninstall-check",
          "RoleBinding/podnet-system/podnet-keys",
          "RoleBinding/podnet-system/podnet-uninstall-check-runners",
          "ServiceAccount/podnet-system/podnet-keys",
          "ServiceAccount/podnet-system/podnet-uninstall-check",
        ],
        "keys.generate and uninstall.check (the defaults) add only their hook objects",
      );
      for (const [key, o] of rendered) {
        const labels = (o.metadata as { labels?: Record<string, string> }).labels ?? {};
        assert.deepEqual(
          RELEASE_LABELS.filter((l) => labels[l] === undefined),
          [],
          `${key} carries the release's labels`,
        );
      }
      const fromKustomize = objects(kustomize(overlay));
      // The certificate's renewal CronJob (keys.renew) is the chart's own, as the key Job is.
      const chartOnly = (key: string): boolean => key.endsWith("/podnet-keys-renew");
      assert.deepEqual([...rendered.keys()].filter(chartOnly).sort(), [
        "CronJob/podnet-system/podnet-keys-renew",
        "Role/podnet-system/podnet-keys-renew",
        "RoleBinding/podnet-system/podnet-keys-renew",
        "ServiceAccount/podnet-system/podnet-keys-renew",
      ]);
      const fromHelm = new Map(
        [...rendered].filter(([key, o]) => !isHook(o) && !chartOnly(key)).map(([key, o]) => [key, withoutReleaseLabels(o, fromKustomize.get(key))] as const),
      );
      // Helm keeps its release record in the namespace, so it exists before the chart (README).
      assert.ok(fromKustomize.delete("Namespace//podnet-system"), `${overlay} has the namespace`);
      assert.deepEqual([...fromHelm.keys()].sort(), [...fromKustomize.keys()].sort(), overlay);
      for (const [key, o] of fromKustomize) assert.deepEqual(fromHelm.get(key), o, `${overlay}: ${key}`);
    }
  });

  test("values are checked by the chart's schema: a misspelt key, a port out of range, an unknown backend or delivery, a malformed image, pull policy or label value are refused, naming the value, before anything renders", () => {
    for (const [set, field] of [
      ["nodeRunner.bakend=nftables", "bakend"],
      ["nodeRunner.port=70000", "port"],
      ["nodeRunner.backend=iptables", "backend"],
      ["eventing.delivery=kafka", "delivery"],
      ["images.nodeRunner.repository=registry.example/nr:1 --privileged", "repository"],
      ["images.nodeRunner.repository=Registry.example/NR", "repository"],
      ["images.decision.tag=1 2", "tag"],
      ["images.decision.digest=sha256:abc", "digest"],
      ["images.nodeRunner=registry.example/nr:1.0.0", "nodeRunner"],
      ["images.pullPolicy=Sometimes", "pullPolicy"],
      ["images.pullSecrets[0].nam=regcred", "nam"],
      ["nodeRunner.podLabels.team=7", "team"],
      ["nodeRunner.updateStrategy.type=Recreate", "type"],
      ["nodeRunner.resources.request.cpu=1", "request"],
      ["decision.tolerations[0].operator=Exists", "tolerations"],
      ["platform.openshift=yes", "openshift"],
      ["nodeRunner.cgroupRoot=/$(HOSTNAME)", "cgroupRoot"],
      ["nodeRunner.cgroupRoot=/../x", "cgroupRoot"],
      ["monitoring.podMonitors.interval=30 seconds", "interval"],
      ["monitoring.dashboard.namespace=Grafana", "namespace"],
      ["monitoring.serviceMonitor.enabled=true", "serviceMonitor"],
      ["keys.renew.before=a month", "before"],
      ["keys.renew.schedule=hourly", "schedule"],
      ["tls.certManager.duration=90d", "duration"],
    ] as const) {
      const r = spawnSync(HELM, ["template", "podnet", path.join(root, "charts/podnet"), "--namespace", "podnet-system", "--set", set], { encoding: "utf8" });
      assert.notEqual(r.status, 0, set);
      assert.match(r.stderr, /values don't meet the specifications of the schema/, set);
      assert.match(r.stderr, new RegExp(field), set);
      assert.equal(r.stdout, "", `${set}: nothing rendered`);
    }
  });

  test("a cgroup root per node: $(NODE_NAME) reaches the node-runner's CGROUP_ROOT, after NODE_NAME (the kubelet expands only variables defined before)", () => {
    const daemonSet = [
      ...objects(
        helm("template", "podnet", path.join(root, "charts/podnet"), "--namespace", "podnet-system", "--set", "nodeRunner.cgroupRoot=/$(NODE_NAME)"),
      ).values(),
    ].find((o) => o.kind === "DaemonSet") as k8s.V1DaemonSet | undefined;
    const env = daemonSet?.spec?.template.spec?.containers[0]?.env ?? [];
    const names = env.map((e) => e.name);
    assert.equal(env.find((e) => e.name === "CGROUP_ROOT")?.value, "/$(NODE_NAME)");
    assert.ok(names.indexOf("NODE_NAME") >= 0 && names.indexOf("NODE_NAME") < names.indexOf("CGROUP_ROOT"), names.join(" "));
  });

  test("NOTES.txt tells what to do next", () => {
    const cp = controlPlane();
    const admin = cp.writeKubeconfig("notes-admin", cp.adminToken);
    const out = helm("install", "podnet-notes", path.join(root, "charts/podnet"), "--namespace", "podnet-system", "--dry-run=client", "--kubeconfig", admin);
    assert.match(out, /NOTES:\npodnet 0\.1\.0 is installed in podnet-system\./);
    assert.match(out, /rollout status daemonset\/podnet-node-runner/);
    assert.match(out, /step 5/);
  });

  test("keys.generate: a pre-install/pre-upgrade Job in the node-runner image runs `pnc keys ensure` as non-root, restricted", () => {
    const rendered = objects(chart(["images.nodeRunner.repository=registry.example/nr", "images.nodeRunner.tag=1.0.0"]));
    const job = rendered.get("Job/podnet-system/podnet-keys") as K8sObject & { metadata: { annotations: Record<string, string> } };
    assert.equal(job.metadata.annotations["helm.sh/hook"], "pre-install,pre-upgrade");
    const pod = (
      job.spec as {
        template: {
          spec: { containers: [{ image: string; args: string[]; securityContext: Record<string, unknown> }]; securityContext: Record<string, unknown> };
        };
      }
    ).template.spec;
    assert.equal(pod.containers[0].image, "registry.example/nr:1.0.0");
    assert.deepEqual(pod.containers[0].args, ["keys", "ensure", "--namespace", "podnet-system"]);
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.deepEqual(pod.containers[0].securityContext.capabilities, { drop: ["ALL"] });
    const off = objects(chart(["keys.generate=false", "uninstall.check=false"]));
    assert.equal([...off.values()].some(isHook), false);
  });

  test("uninstall.check: a pre-delete hook Job in the node-runner image runs `pnc uninstall-check` on Istio's namespace, reading only its ConfigMaps, then stops the node-runners; a failed Job stays for its log", () => {
    const rendered = objects(chart(["istio.namespace=mesh-istio"]));
    const job = rendered.get("Job/podnet-system/podnet-uninstall-check") as K8sObject & { metadata: { annotations: Record<string, string> } };
    assert.equal(job.metadata.annotations["helm.sh/hook"], "pre-delete");
    assert.equal(job.metadata.annotations["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded");
    const spec = job.spec as { backoffLimit: number; template: { spec: { serviceAccountName: string; containers: [{ args: string[] }] } } };
    assert.deepEqual(
      [spec.backoffLimit, spec.template.spec.serviceAccountName, spec.template.spec.containers[0].args],
      [0, "podnet-uninstall-check", ["uninstall-check", "--istio-namespace", "mesh-istio", "--stop-node-runners", "--namespace", "podnet-system"]],
    );
    assert.deepEqual((rendered.get("Role/mesh-istio/podnet-uninstall-check") as { rules?: unknown } | undefined)?.rules, [
      { apiGroups: [""], resources: ["configmaps"], verbs: ["list"] },
    ]);
    // Then it stops the node-runners (their DaemonSet, in the foreground), and nothing else.
    assert.deepEqual((rendered.get("Role/podnet-system/podnet-uninstall-check-runners") as { rules?: unknown } | undefined)?.rules, [
      { apiGroups: ["apps"], resources: ["daemonsets"], resourceNames: ["podnet-node-runner"], verbs: ["get", "delete"] },
    ]);
    assert.equal(objects(chart(["uninstall.check=false"])).has("Job/podnet-system/podnet-uninstall-check"), false);
  });

  test("monitoring.*: PodMonitors for the node-runners (HTTPS, their CA and server name, a token allowed to get /metrics) and the function (its metrics port), the rules file as a PrometheusRule, the dashboard for Grafana's sidecar; none by default", () => {
    const monitoringKinds = ["PodMonitor", "PrometheusRule", "ServiceAccount/podnet-metrics-scraper", "ConfigMap/podnet-dashboard"];
    const isMonitoring = (key: string): boolean => monitoringKinds.some((k) => key.startsWith(`${k.split("/")[0]}/`) && key.includes(k.split("/")[1] ?? ""));
    assert.deepEqual([...objects(chart()).keys()].filter(isMonitoring), []);
    const rendered = objects(
      chart([
        "--namespace=mesh-ops",
        "monitoring.podMonitors.enabled=true",
        "monitoring.podMonitors.labels.release=kube-prometheus-stack",
        "monitoring.podMonitors.interval=15s",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
        "monitoring.dashboard.enabled=true",
        "monitoring.dashboard.namespace=grafana",
      ]),
    );
    const runner = rendered.get("PodMonitor/mesh-ops/podnet-node-runner") as K8sObject & { metadata: { labels: Record<string, string> } };
    assert.equal(runner.metadata.labels.release, "kube-prometheus-stack");
    const [endpoint] = (runner.spec as { podMetricsEndpoints: Record<string, unknown>[] }).podMetricsEndpoints;
    assert.deepEqual(endpoint, {
      port: "metrics",
      scheme: "https",
      interval: "15s",
      tlsConfig: { ca: { configMap: { name: "podnet-node-runner-ca", key: "ca.crt" } }, serverName: NODE_RUNNER_SERVER_NAME },
      authorization: { type: "Bearer", credentials: { name: "podnet-metrics-scraper-token", key: "token" } },
    });
    assert.deepEqual((runner.spec as { selector: unknown }).selector, { matchLabels: { "app.kubernetes.io/name": "podnet-node-runner" } });
    const token = rendered.get("Secret/mesh-ops/podnet-metrics-scraper-token") as K8sObject & {
      type: string;
      metadata: { annotations: Record<string, string> };
    };
    assert.deepEqual(
      [token.type, token.metadata.annotations["kubernetes.io/service-account.name"]],
      ["kubernetes.io/service-account-token", "podnet-metrics-scraper"],
    );
    assert.deepEqual((rendered.get("ClusterRole//podnet-metrics-scraper-mesh-ops") as { rules?: unknown } | undefined)?.rules, [
      { nonResourceURLs: ["/metrics"], verbs: ["get"] },
    ]);
    const fn = rendered.get("PodMonitor/mesh-ops/podnet-decision");
    const fnEndpoint = (fn?.spec as { podMetricsEndpoints: { relabelings: { replacement?: string }[] }[] }).podMetricsEndpoints[0];
    // The function's metrics port, as eventing/base/service.yaml sets it.
    const metricsPort = /name: METRICS_PORT\s+value: "(\d+)"/.exec(readFileSync(path.join(root, "eventing/base/service.yaml"), "utf8"))?.[1];
    assert.equal(fnEndpoint?.relabelings[1]?.replacement, `\${1}:${metricsPort ?? "?"}`);
    const rule = rendered.get("PrometheusRule/mesh-ops/podnet");
    assert.deepEqual(
      JSON.parse(JSON.stringify(rule?.spec)),
      JSON.parse(
        JSON.stringify(
          objects(
            `kind: R\nmetadata: {name: r}\nspec:\n${readFileSync(path.join(root, "config/monitoring/alerts.rules.yaml"), "utf8").replace(/^/gm, "  ")}`,
          ).get("R//r")?.spec,
        ),
      ),
      "the rules file as it is",
    );
    const dashboard = raw(chart(["monitoring.dashboard.enabled=true", "monitoring.dashboard.namespace=grafana"])).find(
      (o) => o.kind === "ConfigMap" && o.metadata.name === "podnet-dashboard",
    ) as (K8sObject & { data: Record<string, string>; metadata: { labels: Record<string, string> } }) | undefined;
    assert.equal(dashboard?.metadata.namespace, "grafana");
    assert.equal(dashboard.metadata.labels.grafana_dashboard, "1");
    assert.equal(dashboard.data["podnet.json"], readFileSync(path.join(root, "config/monitoring/dashboard.json"), "utf8"));
  });

  test("keys.renew: an hourly CronJob in the node-runner image runs `pnc keys renew`, one run at a time, allowed to read and update only the TLS Secret and the CA ConfigMap; off with keys.renew.enabled=false or tls.certManager", () => {
    const rendered = objects(chart(["keys.renew.before=45d", "keys.renew.stepAfter=20m"]));
    const cron = rendered.get("CronJob/podnet-system/podnet-keys-renew") as K8sObject & {
      spec: {
        schedule: string;
        concurrencyPolicy: string;
        jobTemplate: { spec: { template: { spec: { serviceAccountName: string; containers: [{ image: string; args: string[] }] } } } };
      };
    };
    const pod = cron.spec.jobTemplate.spec.template.spec;
    assert.deepEqual(
      [cron.spec.schedule, cron.spec.concurrencyPolicy, pod.serviceAccountName, pod.containers[0].image, pod.containers[0].args],
      [
        "17 * * * *",
        "Forbid",
        "podnet-keys-renew",
        "ghcr.io/podnet/node-runner:0.1.0",
        ["keys", "renew", "--namespace", "podnet-system", "--renew-before", "45d", "--step-after", "20m"],
      ],
    );
    assert.deepEqual((rendered.get("Role/podnet-system/podnet-keys-renew") as { rules?: unknown } | undefined)?.rules, [
      { apiGroups: [""], resources: ["secrets"], resourceNames: ["podnet-node-runner-tls"], verbs: ["get", "update"] },
      { apiGroups: [""], resources: ["configmaps"], resourceNames: ["podnet-node-runner-ca"], verbs: ["get", "update", "patch"] },
    ]);
    for (const off of ["keys.renew.enabled=false", "tls.certManager.enabled=true"])
      assert.equal(objects(chart([off])).has("CronJob/podnet-system/podnet-keys-renew"), false, off);
  });

  test("tls.certManager: a self-signed Issuer, a CA Certificate, a CA Issuer and the serving Certificate for the node-runners' name, in any namespace; the function trusts only the Secret's ca.crt; the key Job makes no TLS", () => {
    const rendered = objects(
      chart(["--namespace=mesh-ops", "tls.certManager.enabled=true", "tls.certManager.duration=720h", "tls.certManager.renewBefore=240h"]),
    );
    const serving = rendered.get("Certificate/mesh-ops/podnet-node-runner-tls")?.spec;
    assert.deepEqual(
      [serving?.secretName, serving?.dnsNames, serving?.duration, serving?.renewBefore, serving?.issuerRef],
      ["podnet-node-runner-tls", [NODE_RUNNER_SERVER_NAME], "720h", "240h", { kind: "Issuer", name: "podnet-node-runner-ca" }],
    );
    assert.equal((rendered.get("Certificate/mesh-ops/podnet-node-runner-ca")?.spec as { isCA?: boolean } | undefined)?.isCA, true);
    assert.deepEqual(rendered.get("Issuer/mesh-ops/podnet-node-runner-ca")?.spec, { ca: { secretName: "podnet-node-runner-ca-key" } });
    assert.deepEqual(rendered.get("Issuer/mesh-ops/podnet-selfsigned")?.spec, { selfSigned: {} });
    const fn = rendered.get("Service/mesh-ops/podnet-decision") as K8sObject & { spec: { template: { spec: { volumes: { name: string }[] } } } };
    assert.deepEqual(
      fn.spec.template.spec.volumes.find((v) => v.name === "node-runner-ca"),
      { name: "node-runner-ca", secret: { secretName: "podnet-node-runner-tls", items: [{ key: "ca.crt", path: "ca.crt" }] } },
    );
    const job = raw(chart(["tls.certManager.enabled=true"])).find((o) => o.kind === "Job" && o.metadata.name === "podnet-keys") as
      (K8sObject & { spec: { template: { spec: { containers: [{ args: string[] }] } } } }) | undefined;
    assert.deepEqual(job?.spec.template.spec.containers[0].args, ["keys", "ensure", "--namespace", "podnet-system", "--no-tls"]);
  });

  test("values reach the objects: images, port, backend, cgroup root, broker delivery, the source's namespace selector, public keys, no GKE quota", () => {
    const rendered = objects(
      chart([
        "images.nodeRunner.repository=registry.example/nr",
        "images.nodeRunner.tag=1.0.0",
        "images.decision.repository=registry.example/fn",
        "images.decision.tag=1.0.0",
        "nodeRunner.port=20443",
        "nodeRunner.backend=nftables",
        "nodeRunner.cgroupRoot=/kubelet",
        "eventing.delivery=broker",
        "eventing.namespaceSelector.matchLabels.mesh=on",
        "keys.generate=false",
        "keys.publicKeys.fn-20261125000000=PEM",
        "platform.nodeCriticalQuota=false",
      ]),
    );
    const ds = JSON.stringify(rendered.get("DaemonSet/podnet-system/podnet-node-runner"));
    for (const needle of [
      '"image":"registry.example/nr:1.0.0"',
      '{"name":"LISTEN_PORT","value":"20443"}',
      '"containerPort":20443',
      '"value":"nftables"',
      '{"name":"CGROUP_ROOT","value":"/kubelet"}',
    ])
      assert.ok(ds.includes(needle), needle);
    const fn = JSON.stringify(rendered.get("Service/podnet-system/podnet-decision"));
    assert.ok(fn.includes('"image":"registry.example/fn:1.0.0"') && fn.includes('{"name":"NODE_RUNNER_PORT","value":"20443"}'), fn);
    assert.ok(rendered.has("Broker/podnet-system/podnet") && rendered.has("Trigger/podnet-system/podnet-pod-events"));
    assert.match(JSON.stringify(rendered.get("ApiServerSource/podnet-system/podnet-pods")), /"kind":"Broker","name":"podnet"/);
    assert.match(JSON.stringify(rendered.get("ApiServerSource/podnet-system/podnet-pods")), /"namespaceSelector":\{"matchLabels":\{"mesh":"on"\}\}/);
    assert.equal(
      (rendered.get("ConfigMap/podnet-system/podnet-public-keys") as { data?: Record<string, string> } | undefined)?.data?.["fn-20261125000000.pem"],
      "PEM",
    );
    assert.equal(rendered.has("ResourceQuota/podnet-system/podnet-node-critical"), false);
  });

  test("invalid values are refused with a clear error", () => {
    for (const [set, message] of [
      // (a backend or delivery the chart does not know: its schema, the test above)
      ["keys.publicKeys.fn-1=PEM", /keys.publicKeys needs keys.generate=false/],
    ] as const) {
      assert.throws(
        () => chart([set]),
        (err: unknown) => message.test(String((err as { stderr?: string }).stderr)),
      );
    }
  });

  // The values Istio's and Linkerd's charts have, each reaching its object; empty ones keep the
  // manifests' (the kustomize comparison above is the defaults' test).
  test("images by repository, tag and digest, pull policy and secrets, resources, scheduling, priority, update strategy, pod labels and annotations reach the node-runner, the function and the key Job", () => {
    const rendered = objects(chart([...EVERY_VALUE]));
    const ds = rendered.get("DaemonSet/podnet-system/podnet-node-runner") as unknown as k8s.V1DaemonSet;
    const runner = ds.spec?.template;
    assert.deepEqual(
      {
        image: runner?.spec?.containers[0]?.image,
        pullPolicy: runner?.spec?.containers[0]?.imagePullPolicy,
        pullSecrets: runner?.spec?.imagePullSecrets,
        resources: runner?.spec?.containers[0]?.resources,
        nodeSelector: runner?.spec?.nodeSelector,
        tolerations: runner?.spec?.tolerations,
        affinity: runner?.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms[0]?.matchExpressions?.[0],
        priority: runner?.spec?.priorityClassName,
        strategy: ds.spec?.updateStrategy,
        labels: runner?.metadata?.labels,
        annotations: runner?.metadata?.annotations,
      },
      {
        image: `registry.example:5000/mesh/nr:0.1.0@${DIGEST}`,
        pullPolicy: "Always",
        pullSecrets: [{ name: "regcred" }],
        resources: { requests: { cpu: "100m" }, limits: { memory: "512Mi" } },
        nodeSelector: { "kubernetes.io/os": "linux", pool: "mesh" },
        tolerations: [{ key: "dedicated", operator: "Exists" }],
        affinity: { key: "zone", operator: "Exists" },
        priority: "mesh-critical",
        strategy: { type: "OnDelete" },
        labels: { "app.kubernetes.io/name": "podnet-node-runner", "app.kubernetes.io/part-of": "podnet", "sidecar.istio.io/inject": "false", team: "net" },
        annotations: { "example.com/owner": "net" },
      },
    );
    const fn = (rendered.get("Service/podnet-system/podnet-decision") as unknown as { spec: { template: k8s.V1PodTemplateSpec } }).spec.template;
    assert.deepEqual(
      {
        image: fn.spec?.containers[0]?.image,
        pullPolicy: fn.spec?.containers[0]?.imagePullPolicy,
        pullSecrets: fn.spec?.imagePullSecrets,
        memory: fn.spec?.containers[0]?.resources,
        team: fn.metadata?.labels?.team,
        inject: fn.metadata?.labels?.["sidecar.istio.io/inject"],
        maxScale: fn.metadata?.annotations?.["autoscaling.knative.dev/max-scale"],
        minScale: fn.metadata?.annotations?.["autoscaling.knative.dev/min-scale"],
      },
      {
        image: "registry.example:5000/mesh/fn:2.0.1",
        pullPolicy: "Always",
        pullSecrets: [{ name: "regcred" }],
        memory: { requests: { memory: "128Mi" } },
        team: "net",
        inject: "false",
        maxScale: "5",
        minScale: "1",
      },
    );
    const job = (rendered.get("Job/podnet-system/podnet-keys") as unknown as { spec: { template: k8s.V1PodTemplateSpec } }).spec.template.spec;
    assert.deepEqual(
      {
        image: job?.containers[0]?.image,
        pullPolicy: job?.containers[0]?.imagePullPolicy,
        pullSecrets: job?.imagePullSecrets,
        resources: job?.containers[0]?.resources,
        nodeSelector: job?.nodeSelector,
        tolerations: job?.tolerations,
      },
      {
        image: `registry.example:5000/mesh/nr:0.1.0@${DIGEST}`,
        pullPolicy: "Always",
        pullSecrets: [{ name: "regcred" }],
        resources: { limits: { memory: "300Mi" } },
        nodeSelector: { "kubernetes.io/os": "linux", pool: "system" },
        tolerations: [{ operator: "Exists" }],
      },
    );
  });

  // The namespace is the release's: every object, every reference to it (RBAC subjects, the
  // admission policies' ServiceAccount names, the audiences, the function's own namespace for
  // its allowed senders), and nothing left naming podnet-system.
  test("installed into another namespace, every object and every reference to it follow", () => {
    for (const set of [[], ["eventing.delivery=broker"], ["platform.openshift=true"]]) {
      const text = helm("template", "podnet", path.join(root, "charts/podnet"), "--namespace", "mesh-ops", ...set.flatMap((s) => ["--set", s]));
      assert.doesNotMatch(text, /podnet-system/, set.join(","));
      const rendered = [...objects(text).values()];
      for (const o of rendered) {
        const clusterScoped = [
          "ClusterRole",
          "ClusterRoleBinding",
          "ValidatingAdmissionPolicy",
          "ValidatingAdmissionPolicyBinding",
          "SecurityContextConstraints",
        ];
        // (but the uninstall check's read of istiod's ConfigMaps, in Istio's namespace)
        if (!clusterScoped.includes(o.kind) && o.metadata.name !== "podnet-uninstall-check")
          assert.equal(o.metadata.namespace, "mesh-ops", `${o.kind}/${o.metadata.name}`);
      }
      assert.match(text, /system:serviceaccount:mesh-ops:podnet-node-runner/);
      assert.match(text, /audience: serving\.knative\.dev\/service\/mesh-ops\/podnet-decision/);
      assert.match(text, /name: CONTROLLER_NAMESPACE\n\s+value: mesh-ops/);
    }
  });

  test("each platform's rendering, one with every value set in another namespace, and one with its monitoring, is accepted by the real API server with Knative's and prometheus-operator's CRDs", async () => {
    // Server-side dry run: every object fully validated (schemas, CRDs, admission), none kept,
    // so each rendering is judged on its own.
    const client = k8s.KubernetesObjectApi.makeApiClient(controlPlane().kubeConfig());
    await controlPlane().ensureNamespace("podnet-system");
    await controlPlane().ensureNamespace("mesh-ops");
    await controlPlane().ensureNamespace("istio-system");
    for (const set of [
      [],
      ["eventing.delivery=broker", "keys.generate=false", "keys.publicKeys.fn-1=PEM"],
      ["platform.openshift=true", "nodeRunner.cgroupRoot=/kubelet"],
      ["--namespace=mesh-ops", ...EVERY_VALUE],
      // prometheus-operator's CRDs are installed too (build.sh fetches them).
      ["monitoring.podMonitors.enabled=true", "monitoring.prometheusRule.enabled=true", "monitoring.dashboard.enabled=true"],
      // And cert-manager's.
      ["tls.certManager.enabled=true"],
    ]) {
      // SecurityContextConstraints is OpenShift's own API: its rendering is checked above.
      const docs = raw(chart(set)).filter((o) => o.kind !== "SecurityContextConstraints");
      for (const doc of docs) {
        await client.create(doc as k8s.KubernetesObject, undefined, "All").catch((err: unknown) => {
          assert.fail(`${set.join(",") || "defaults"}: ${doc.kind}/${doc.metadata.name} refused: ${err instanceof Error ? err.message : String(err)}`);
        });
      }
    }
  });

  test("installed as the README says (namespace first, then helm upgrade --install, twice); the key Job's command, with the Job's own RBAC, creates the keys once and keeps them", async () => {
    const cp = controlPlane();
    const admin = cp.writeKubeconfig("helm-admin", cp.adminToken);
    const kubectl = (...args: string[]): string => execFileSync(KUBECTL, [...args, "--kubeconfig", admin], quiet);
    kubectl("create", "namespace", "podnet-system", "--dry-run=client", "-o", "yaml"); // the README's command, checked offline: an earlier test made it
    kubectl("label", "namespace", "podnet-system", "pod-security.kubernetes.io/enforce=privileged", "istio-injection=disabled", "--overwrite");
    const chartDir = path.join(root, "charts/podnet");
    // Hooks need a kubelet to run the Job: installed without them, the Job's objects made below.
    for (let i = 0; i < 2; i++) helm("upgrade", "--install", "podnet", chartDir, "--namespace", "podnet-system", "--no-hooks", "--kubeconfig", admin);
    assert.match(helm("status", "podnet", "--namespace", "podnet-system", "--kubeconfig", admin), /STATUS: deployed/);
    assert.match(
      kubectl("-n", "podnet-system", "get", "daemonset/podnet-node-runner", "services.serving.knative.dev/podnet-decision", "-o", "name"),
      /daemonset.apps\/podnet-node-runner\nservice.serving.knative.dev\/podnet-decision/,
    );

    const objectsApi = k8s.KubernetesObjectApi.makeApiClient(cp.kubeConfig());
    for (const hook of raw(chart()).filter((o) => isHook(o) && o.kind !== "Job" && o.metadata.name === "podnet-keys")) await objectsApi.create(hook);
    const jobKubeconfig = cp.writeKubeconfig("podnet-keys", await cp.serviceAccountToken("podnet-system", "podnet-keys"));
    const ensure = () =>
      spawnSync(process.execPath, ["--import", "tsx", path.join(root, "cli/pnc.ts"), "keys", "ensure", "--kubeconfig", jobKubeconfig], {
        cwd: root,
        encoding: "utf8",
      });
    const core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    const ns = "podnet-system";

    const first = ensure();
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout.match(/created/g)?.length, 4, first.stdout);
    const signing = await core.readNamespacedSecret({ namespace: ns, name: "podnet-signing-keys" });
    assert.equal(signing.metadata?.annotations?.["kubectl.kubernetes.io/last-applied-configuration"], undefined, "no copy of the private key in an annotation");
    const [keyFile, privateB64] = Object.entries(signing.data ?? {})[0] ?? [];
    const publicKeys = await core.readNamespacedConfigMap({ namespace: ns, name: "podnet-public-keys" });
    const message = Buffer.from("apply");
    assert.ok(
      verify(
        null,
        message,
        createPublicKey(publicKeys.data?.[keyFile ?? ""] ?? ""),
        sign(null, message, createPrivateKey(Buffer.from(privateB64 ?? "", "base64").toString())),
      ),
      "a working pair",
    );
    const tls = await core.readNamespacedSecret({ namespace: ns, name: "podnet-node-runner-tls" });
    const ca = new X509Certificate((await core.readNamespacedConfigMap({ namespace: ns, name: "podnet-node-runner-ca" })).data?.["ca.crt"] ?? "");
    const cert = new X509Certificate(Buffer.from(tls.data?.["tls.crt"] ?? "", "base64"));
    assert.ok(
      cert.verify(ca.publicKey) && cert.checkHost(NODE_RUNNER_SERVER_NAME) !== undefined,
      "the serving certificate is the CA's, for the node-runners' name",
    );

    const again = ensure();
    assert.equal(again.status, 0, again.stderr);
    assert.equal(again.stdout.match(/kept/g)?.length, 4, again.stdout);
    assert.equal(
      (await core.readNamespacedSecret({ namespace: ns, name: "podnet-signing-keys" })).metadata?.resourceVersion,
      signing.metadata?.resourceVersion,
      "an upgrade replaces no key",
    );

    await core.deleteNamespacedConfigMap({ namespace: ns, name: "podnet-public-keys" });
    const repaired = ensure();
    assert.match(repaired.stdout, /created ConfigMap podnet-system\/podnet-public-keys/);
    assert.deepEqual(
      (await core.readNamespacedConfigMap({ namespace: ns, name: "podnet-public-keys" })).data,
      publicKeys.data,
      "remade from the private key, not a new pair",
    );

    await core.deleteNamespacedSecret({ namespace: ns, name: "podnet-signing-keys" });
    const refused = ensure();
    assert.equal(refused.status, 3, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /public keys without their private keys.*nothing replaced/);
    await assert.rejects(core.readNamespacedSecret({ namespace: ns, name: "podnet-signing-keys" }), "nothing created");

    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: "someone-elses" }, stringData: { a: "b" } } });
    const jobCore = cp.kubeConfig(await cp.serviceAccountToken(ns, "podnet-keys")).makeApiClient(k8s.CoreV1Api);
    await assert.rejects(
      jobCore.readNamespacedSecret({ namespace: ns, name: "someone-elses" }),
      (err: unknown) => (err as { code?: number }).code === 403,
      "the Job reads only its own objects",
    );

    // (no kubelet here to run the uninstall check's Job: test/node runs it)
    helm("uninstall", "podnet", "--namespace", "podnet-system", "--no-hooks", "--kubeconfig", admin);
    assert.ok(await core.readNamespacedSecret({ namespace: ns, name: "podnet-node-runner-tls" }), "keys outlive the release (README)");
  });

  test("Istio's own istiod chart with config/istio/istiod-values.yaml: the injector carries the template, CNI mode off", () => {
    const out = helm(
      "template",
      "istiod",
      istiodChart(),
      "--namespace",
      "istio-system",
      "-f",
      path.join(root, "config/istio/istiod-values.yaml"),
      "--set-file",
      `sidecarInjectorWebhook.templates.podnet=${path.join(root, "config/istio/podnet-injection-template.yaml")}`,
    );
    const injector = raw(out).find((o) => o.kind === "ConfigMap" && o.metadata.name === "istio-sidecar-injector") as
      { data: { config: string; values: string } } | undefined;
    assert.ok(injector !== undefined, "the chart renders the injector ConfigMap");
    const values = JSON.parse(injector.data.values) as { pilot: { cni: { enabled: boolean } }; global: { proxy: { seccompProfile: { type: string } } } };
    assert.equal(values.pilot.cni.enabled, false, "CNI mode off: the template does not need it");
    assert.equal(values.global.proxy.seccompProfile.type, "RuntimeDefault");
    const config = parseAllDocuments(injector.data.config)[0]?.toJS() as { defaultTemplates: string[]; templates: Record<string, string> };
    assert.deepEqual(config.defaultTemplates, ["sidecar", "podnet"]);
    assert.equal(
      config.templates.podnet,
      readFileSync(path.join(root, "config/istio/podnet-injection-template.yaml"), "utf8"),
      "the podnet template is among the injector's templates, as written",
    );
  });

  // An istiod already running, as a canary revision with values of its own and in CNI mode with
  // Multus (as Istio's OpenShift install with istio-cni leaves it): the README's command for it
  // merges this project's values in and resets nothing (a plain `helm upgrade -f` would put every
  // other value back to the chart's default), and turns CNI mode off where the chart reads it.
  test("an existing istiod (revision canary, its own values, CNI mode with Multus): the README's upgrade adds the template, turns CNI mode off and keeps every other value", () => {
    const cp = controlPlane();
    const admin = cp.writeKubeconfig("istiod-admin", cp.adminToken);
    const release = ["istiod-canary", istiodChart(), "--namespace", "istio-system", "--kubeconfig", admin];
    helm(
      "install",
      ...release,
      "--create-namespace",
      "--set",
      "revision=canary",
      "--set",
      "pilot.resources.requests.memory=123Mi",
      "--set",
      "meshConfig.accessLogFile=/dev/stdout",
      "--set",
      "cni.enabled=true",
      "--set",
      "cni.provider=multus",
    );
    try {
      // README, "Install", step 5 for an existing istiod:
      helm(
        "upgrade",
        ...release,
        "--reset-then-reuse-values",
        "-f",
        path.join(root, "config/istio/istiod-values.yaml"),
        "--set-file",
        `sidecarInjectorWebhook.templates.podnet=${path.join(root, "config/istio/podnet-injection-template.yaml")}`,
      );
      const values = JSON.parse(helm("get", "values", "istiod-canary", "--namespace", "istio-system", "--kubeconfig", admin, "-o", "json")) as {
        revision?: string;
        pilot?: { resources?: { requests?: { memory?: string } } };
        cni?: { enabled?: boolean; provider?: string };
        meshConfig?: { accessLogFile?: string };
        sidecarInjectorWebhook?: { templates?: { podnet?: string }; defaultTemplates?: string[] };
      };
      // The revision and the running istiod's own values stay; CNI mode off and the podnet template come in.
      assert.deepEqual(
        {
          revision: values.revision,
          memory: values.pilot?.resources?.requests?.memory,
          accessLog: values.meshConfig?.accessLogFile,
          cni: values.cni,
          defaultTemplates: values.sidecarInjectorWebhook?.defaultTemplates,
          template: values.sidecarInjectorWebhook?.templates?.podnet?.includes("istio-validation"),
        },
        {
          revision: "canary",
          memory: "123Mi",
          accessLog: "/dev/stdout",
          cni: { enabled: false, provider: "multus" },
          defaultTemplates: ["sidecar", "podnet"],
          template: true,
        },
      );
      // The revision's own injector carries the template, and injects with CNI mode off (the
      // value its Multus annotation depends on).
      const injector = JSON.parse(
        execFileSync(KUBECTL, ["-n", "istio-system", "get", "configmap", "istio-sidecar-injector-canary", "-o", "json", "--kubeconfig", admin], quiet),
      ) as {
        data: { config: string; values: string };
      };
      assert.match(injector.data.config, /podnet:/);
      assert.equal((JSON.parse(injector.data.values) as { pilot: { cni: { enabled: boolean } } }).pilot.cni.enabled, false);
    } finally {
      helm("uninstall", "istiod-canary", "--namespace", "istio-system", "--kubeconfig", admin);
    }
  });
});

describe("Helm chart on a cluster without Knative [needs control plane]", skipUnlessCI(missing), () => {
  const controlPlane = controlPlaneForSuite(missing);

  test("the install stops at once, naming what is missing in one line", () => {
    const cp = controlPlane();
    const admin = cp.writeKubeconfig("helm-admin", cp.adminToken);
    assert.throws(
      () =>
        helm("install", "podnet", path.join(root, "charts/podnet"), "--namespace", "podnet-system", "--create-namespace", "--no-hooks", "--kubeconfig", admin),
      (err: unknown) =>
        /Knative Serving is not installed on this cluster \(no serving\.knative\.dev\/v1\/Service\): install it first/.test(
          String((err as { stderr?: string }).stderr),
        ),
    );
    // helm template (no cluster to look at) still renders.
    assert.match(chart(), /kind: ApiServerSource/);
  });
});
