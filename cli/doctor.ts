// `pnc doctor`: one command that checks a live install and says, per check, ok / warning /
// error with the fix. The checks are pure (a snapshot of what the cluster holds in, findings
// out); reading the snapshot is the edge (readSnapshot, through @kubernetes/client-node).
import { createPrivateKey, createPublicKey, X509Certificate, type KeyObject } from "node:crypto";
import { parseArgs } from "node:util";
import type { KubeConfig, V1Node } from "@kubernetes/client-node";
import { readMark, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../contract/mark.ts";
import { WAITER_CONTAINER } from "../functions/decision.ts";
import { errorMessage } from "../lib/errors.ts";
import { CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, ifFound, loadKubeConfig } from "./kube-client.ts";
import { lastProjectWarnings } from "./status.ts";
import { TESTED_VERSIONS } from "./tested-versions.ts";
import { parsePolicy, POLICY_CONFIGMAP, POLICY_KEY, type Policy } from "../functions/policy.ts";
import { NODE_RUNNER_DAEMONSET } from "../node-runner/kube.ts";
import { decodedSecretData } from "./manifests.ts";
import { TLS_SECRET_NAME } from "./tls.ts";

export type Severity = "ok" | "warning" | "error";

export interface Finding {
  readonly check: string;
  readonly severity: Severity;
  readonly detail: string;
  /** What to do about it (empty when ok). */
  readonly fix: string;
}

interface Condition {
  readonly type?: string;
  readonly status?: string;
  readonly reason?: string;
  readonly message?: string;
}

/** A Knative object as far as the checks read it. */
export interface KnativeObject {
  readonly name: string;
  readonly conditions: readonly Condition[];
  readonly sinkAudience?: string | undefined;
}

/** What the checks read from the cluster; a missing part is undefined (not installed, or not readable). */
export interface ClusterSnapshot {
  readonly namespace: string;
  /** Where istiod's injector ConfigMaps and Deployments are (default istio-system). */
  readonly istioNamespace?: string;
  /** Schedulable Linux nodes by name. */
  readonly nodes: readonly string[];
  /** The node-runner pods: node and whether Ready. */
  readonly runners: readonly { readonly node: string; readonly ready: boolean }[];
  readonly functionService?: KnativeObject | undefined;
  readonly sources: readonly KnativeObject[];
  /** Knative Eventing's config-features `authentication-oidc`, when readable. */
  readonly oidcFeature?: string | undefined;
  /** Each istiod revision's injector: its name, whether it carries the podnet template, and CNI mode. */
  readonly injectors: readonly {
    readonly name: string;
    readonly hasTemplate: boolean;
    readonly cniEnabled: boolean;
    readonly waiterImage?: string | undefined;
  }[];
  /** DaemonSets named like Istio's CNI agent, anywhere (namespace/name). */
  readonly istioCniAgents: readonly string[];
  /** The node-runners' serving certificate (PEM), when the Secret exists. */
  readonly tlsCertificate?: string | undefined;
  readonly signingKeys: boolean;
  readonly publicKeys: boolean;
  /** Signing keys (keyid) whose public half the node-runners' ConfigMap lacks, or holds a different key for. */
  readonly unmatchedKeys?: readonly string[];
  /** The policy ConfigMap's document, when it exists. */
  readonly policyText?: string | undefined;
  /** The node-runner DaemonSet: its priority class (and whether that class exists), image, and pods wanted and made. */
  readonly runnerDaemonSet?: {
    readonly priorityClassName?: string | undefined;
    readonly priorityClassExists: boolean;
    readonly image: string;
    readonly desired: number;
    readonly scheduled: number;
  };
  /** ResourceQuotas in the namespace scoped to the runners' priority class: pods allowed and used. */
  readonly priorityQuotas?: readonly { readonly name: string; readonly hard?: number | undefined; readonly used?: number | undefined }[];
  /** The last FailedCreate Warning of the DaemonSet (a quota or an admission refusing its pods). */
  readonly runnerCreateFailure?: string | undefined;
  /** Versions as the installs label them: istiod per revision (app.kubernetes.io/version), Knative Serving's and Eventing's controllers. */
  readonly versions?: {
    readonly istio: readonly { readonly name: string; readonly version?: string | undefined }[];
    readonly knative: readonly { readonly component: string; readonly version?: string | undefined }[];
  };
  /** Mesh pods whose waiter is still running: name, seconds it has run, their mark, the project's last Warning. */
  readonly waitingPods: readonly {
    readonly pod: string;
    readonly waitingSeconds: number;
    readonly mark?: string | undefined;
    readonly lastWarning?: string | undefined;
  }[];
  readonly now: number;
}

const DAY_MS = 86_400_000;
/** A waiter running longer than this is stuck (a programmed pod's exits within a second or two). */
const STUCK_AFTER_SECONDS = 60;

const ok = (check: string, detail: string): Finding => ({ check, severity: "ok", detail, fix: "" });
const warn = (check: string, detail: string, fix: string): Finding => ({ check, severity: "warning", detail, fix });
const error = (check: string, detail: string, fix: string): Finding => ({ check, severity: "error", detail, fix });

function readyCondition(o: KnativeObject): Condition | undefined {
  return o.conditions.find((c) => c.type === "Ready");
}

/** Every check, in the order an operator reads them. */
export function diagnose(s: ClusterSnapshot): Finding[] {
  const out: Finding[] = [];
  const ns = s.namespace;

  // The node agents: one Ready runner on every schedulable node.
  const readyOn = new Set(s.runners.filter((r) => r.ready).map((r) => r.node));
  const without = s.nodes.filter((n) => !readyOn.has(n));
  out.push(
    without.length === 0
      ? ok("node-runners", `Ready on all ${s.nodes.length} schedulable node(s)`)
      : error(
          "node-runners",
          `no Ready node-runner on ${without.length} of ${s.nodes.length} node(s): ${without.slice(0, 10).join(", ")}${without.length > 10 ? ", …" : ""}; mesh pods there wait and fail`,
          `kubectl -n ${ns} describe daemonset podnet-node-runner (taints, node selector, the node-critical quota: platform.nodeCriticalQuota)`,
        ),
  );

  // The runners' priority class and the quota GKE needs for it outside kube-system.
  if (s.runnerDaemonSet !== undefined) {
    const ds = s.runnerDaemonSet;
    const pc = ds.priorityClassName ?? "";
    const quotaFull = (s.priorityQuotas ?? []).find((q) => q.hard !== undefined && q.used !== undefined && q.used >= q.hard);
    out.push(
      pc !== "" && !ds.priorityClassExists
        ? error(
            "priority",
            `the node-runners' priority class ${pc} does not exist: no runner pod can be created`,
            "create it, or nodeRunner.priorityClassName=<an existing class>",
          )
        : s.runnerCreateFailure !== undefined && ds.scheduled < ds.desired
          ? error(
              "priority",
              `the DaemonSet made ${ds.scheduled} of ${ds.desired} runner pods: ${s.runnerCreateFailure}`,
              pc === "system-node-critical"
                ? "GKE admits system-node-critical pods outside kube-system only under a quota: platform.nodeCriticalQuota=true"
                : `kubectl -n ${ns} describe daemonset podnet-node-runner`,
            )
          : quotaFull !== undefined
            ? warn(
                "priority",
                `the quota ${quotaFull.name} for ${pc} pods is used up (${quotaFull.used ?? 0}/${quotaFull.hard ?? 0}): a new node gets no runner`,
                "raise its pods limit",
              )
            : ok(
                "priority",
                pc === ""
                  ? "the node-runners have no priority class"
                  : `the node-runners run as ${pc}${(s.priorityQuotas ?? []).length > 0 ? ", within their quota" : ""}`,
              ),
    );
  }

  // The keys.
  out.push(
    s.signingKeys && s.publicKeys
      ? ok("keys", "the function's signing key and the node-runners' public keys are there")
      : error(
          "keys",
          `missing: ${[s.signingKeys ? "" : "Secret podnet-signing-keys", s.publicKeys ? "" : "ConfigMap podnet-public-keys"].filter(Boolean).join(", ")}`,
          "helm upgrade the release (keys.generate makes them), or apply those of `pnc keys generate` (README, Install)",
        ),
  );
  if (s.signingKeys && s.publicKeys && (s.unmatchedKeys ?? []).length > 0) {
    out.push(
      error(
        "keys",
        `the node-runners do not accept the function's key(s) ${(s.unmatchedKeys ?? []).join(", ")}: its public half is missing from, or differs in, ConfigMap podnet-public-keys; every request is refused (unknown-key or bad-signature)`,
        "apply the public-keys ConfigMap made with the Secret (pnc keys rotate writes both; README, Key rotation)",
      ),
    );
  }
  if (s.tlsCertificate === undefined) {
    out.push(error("certificate", "no Secret podnet-node-runner-tls: the node-runners cannot serve", "as for the keys above"));
  } else {
    let notAfter: number | undefined;
    try {
      notAfter = Date.parse(new X509Certificate(s.tlsCertificate).validTo);
    } catch (err) {
      out.push(error("certificate", `podnet-node-runner-tls holds no readable certificate: ${errorMessage(err)}`, "replace the Secret (README, Install)"));
    }
    if (notAfter !== undefined) {
      const days = Math.floor((notAfter - s.now) / DAY_MS);
      const when = new Date(notAfter).toISOString();
      out.push(
        days < 0
          ? error("certificate", `the node-runners' certificate expired on ${when}`, "renew it: README, Certificates (pnc keys renew)")
          : days < 30
            ? warn("certificate", `the node-runners' certificate expires in ${days} day(s), on ${when}`, "renew it: README, Certificates (pnc keys renew)")
            : ok("certificate", `the node-runners' certificate is valid until ${when} (${days} days)`),
      );
    }
  }

  // The function and its sources.
  const fnReady = s.functionService === undefined ? undefined : readyCondition(s.functionService);
  out.push(
    s.functionService === undefined
      ? error("function", `no Knative Service podnet-decision in ${ns}`, "install the chart (README, Install, step 4)")
      : fnReady?.status === "True"
        ? ok("function", "the Knative Service podnet-decision is Ready")
        : error(
            "function",
            `the Knative Service podnet-decision is not Ready: ${fnReady?.reason ?? "no Ready condition"}${fnReady?.message === undefined ? "" : `: ${fnReady.message}`}`,
            `kubectl -n ${ns} get ksvc,revision; kubectl -n ${ns} logs -l serving.knative.dev/service=podnet-decision -c decision`,
          ),
  );
  out.push(...policyFindings(s.policyText, ns));
  for (const source of s.sources) {
    const ready = readyCondition(source);
    out.push(
      ready?.status === "True"
        ? ok(`source ${source.name}`, "Ready")
        : error(
            `source ${source.name}`,
            `not Ready: ${ready?.reason ?? "no Ready condition (its sink does not resolve yet: README, Troubleshooting)"}${ready?.message === undefined ? "" : `: ${ready.message}`}`,
            `kubectl -n ${ns} describe ${source.name.startsWith("podnet-resync") ? "pingsource" : "apiserversource"} ${source.name}`,
          ),
    );
    if (source.sinkAudience === undefined || source.sinkAudience === "") {
      out.push(
        error(
          `source ${source.name}`,
          "its sink names no audience: Knative sends no token, and the function refuses every event",
          "install the chart's sources as they are (sink.audience)",
        ),
      );
    }
  }
  out.push(
    s.oidcFeature === "enabled"
      ? ok("knative oidc", "Knative Eventing's authentication-oidc is enabled")
      : error(
          "knative oidc",
          `Knative Eventing's authentication-oidc is ${s.oidcFeature ?? "not readable"}: its sources send no token, and the function refuses every event`,
          `kubectl -n knative-eventing patch configmap config-features --type merge -p '{"data":{"authentication-oidc":"enabled"}}'`,
        ),
  );

  // Istio.
  if (s.injectors.length === 0) {
    out.push(
      error(
        "istio",
        `no istiod injector ConfigMap (istio-sidecar-injector*) in ${s.istioNamespace ?? "istio-system"}`,
        "install istiod (README, Install, step 5), or name its namespace: --istio-namespace",
      ),
    );
  }
  for (const injector of s.injectors) {
    out.push(
      !injector.hasTemplate
        ? error(
            `istio ${injector.name}`,
            "its injector has no podnet template: pods get Istio's privileged istio-init",
            "README, Install, step 5, for this revision",
          )
        : injector.cniEnabled
          ? warn(
              `istio ${injector.name}`,
              "CNI mode is on: not needed by the template, and with istio-cni it programs the same pods",
              "cni.enabled=false (config/istio/istiod-values.yaml)",
            )
          : ok(`istio ${injector.name}`, "carries the podnet template, CNI mode off"),
    );
  }
  out.push(...waiterImageFindings(s));
  out.push(
    s.istioCniAgents.length === 0
      ? ok("istio-cni", "no istio-cni agent")
      : error(
          "istio-cni",
          `Istio's own CNI agent runs (${s.istioCniAgents.join(", ")}): it programs the same pods`,
          "uninstall Istio's istio-cni (README, Install, step 5)",
        ),
  );

  // Pods waiting.
  const stuck = s.waitingPods.filter((p) => p.waitingSeconds >= STUCK_AFTER_SECONDS);
  out.push(
    stuck.length === 0
      ? ok("waiting pods", `none waiting longer than ${STUCK_AFTER_SECONDS} s`)
      : warn(
          "waiting pods",
          stuck
            .slice(0, 10)
            .map((p) => `${p.pod} (${p.waitingSeconds} s, mark ${p.mark ?? "none"}${p.lastWarning === undefined ? "" : `; ${p.lastWarning}`})`)
            .join("; "),
          "npm run pnc -- status; README, Troubleshooting",
        ),
  );
  if (s.versions !== undefined) out.push(...versionFindings(s.versions));
  return out;
}

/** The policy as the function reads it: a document it refuses keeps the last good one in force; dry-run and fail-open apply nothing. */
function policyFindings(text: string | undefined, ns: string): Finding[] {
  if (text === undefined)
    return [
      warn(
        "policy",
        `no ConfigMap podnet-policy in ${ns}: the function decides with its built-in defaults`,
        "install the chart (README, Install, step 4): it makes podnet-policy",
      ),
    ];
  let policy: Policy;
  try {
    policy = parsePolicy(text, ns);
  } catch (err) {
    return [
      error(
        "policy",
        `the function refuses the policy in podnet-policy and keeps the last good one: ${errorMessage(err)}`,
        "pnc decide --policy <file> checks a document; fix the ConfigMap",
      ),
    ];
  }
  const mode = policy.document.mode;
  if (mode === "fail-open")
    return [
      warn(
        "policy",
        `the incident switch is on (mode fail-open): pods start without traffic interception (policy ${policy.id})`,
        "pnc fail-open off once the incident is over",
      ),
    ];
  if (mode === "dry-run")
    return [
      warn(
        "policy",
        `mode dry-run: nothing is applied and mesh pods' waiters time out (policy ${policy.id})`,
        "set mode: enforce in podnet-policy when the decisions look right",
      ),
    ];
  return [ok("policy", `enforce, policy ${policy.id}`)];
}

/** A well-formed image reference: [registry/]path[:tag][@digest], as the chart's schema checks them. */
const IMAGE_REFERENCE =
  /^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$/;
const imageTag = (image: string): string | undefined => /:([\w][\w.-]{0,127})(?:@|$)/.exec(image.replace(/^[^/]+:\d+\//, ""))?.[1];

/** Each injector's default waiter image: a name that can be pulled, and of the node-runners' release. */
function waiterImageFindings(s: ClusterSnapshot): Finding[] {
  return s.injectors.flatMap((injector) => {
    const image = injector.waiterImage;
    if (!injector.hasTemplate || image === undefined) return [];
    if (!IMAGE_REFERENCE.test(image)) {
      return [
        error(
          `waiter ${injector.name}`,
          `the template's waiter image "${image}" is not an image reference: every mesh pod fails to pull it`,
          "pnc istio-template --waiter-image <your registry>/waiter:<version> (README, Install, step 5)",
        ),
      ];
    }
    const runnerTag = s.runnerDaemonSet === undefined ? undefined : imageTag(s.runnerDaemonSet.image);
    const waiterTag = imageTag(image);
    if (runnerTag !== undefined && waiterTag !== undefined && runnerTag !== waiterTag) {
      return [
        warn(
          `waiter ${injector.name}`,
          `the template's waiter image ${image} is of another release than the node-runners' (${runnerTag})`,
          "give istiod the template of this release (README, Upgrade)",
        ),
      ];
    }
    return [ok(`waiter ${injector.name}`, `the template's waiter image is ${image}`)];
  });
}

/** Istio's and Knative's versions, as their installs label them, against those tested here. */
function versionFindings(v: NonNullable<ClusterSnapshot["versions"]>): Finding[] {
  const out: Finding[] = [];
  const tested = TESTED_VERSIONS;
  const minor = (version: string): string | undefined => /^v?(\d+\.\d+)(?:\.|$|-)/.exec(version)?.[1];
  for (const istiod of v.istio) {
    const version = istiod.version;
    out.push(
      version === undefined || version === tested.istio.developmentLabel
        ? ok(`version ${istiod.name}`, `istiod from Istio's development charts (no release label); tested: ${tested.istio.development}`)
        : tested.istio.releases.includes(minor(version) ?? "")
          ? ok(`version ${istiod.name}`, `Istio ${version}, a tested release`)
          : warn(
              `version ${istiod.name}`,
              `Istio ${version} is not a tested release (tested: ${tested.istio.development}; no Istio release could be tested, docs/testing.md)`,
              "run the parity and injector tests against it (docs/testing.md) before relying on it",
            ),
    );
  }
  for (const component of v.knative) {
    const version = component.version;
    out.push(
      version === undefined || version === "devel"
        ? ok(`version ${component.component}`, `Knative built from source (no release label); tested: ${tested.knative.release}`)
        : minor(version) === tested.knative.release
          ? ok(`version ${component.component}`, `Knative ${version}, the tested release`)
          : warn(
              `version ${component.component}`,
              `Knative ${version} is not the tested release (${tested.knative.release})`,
              "run the Knative suite against it (docs/testing.md) before relying on it",
            ),
    );
  }
  return out;
}

/** Exit codes for scripts: 0 all ok, 1 warnings, 2 errors. */
export function doctorExitCode(findings: readonly Finding[]): number {
  if (findings.some((f) => f.severity === "error")) return 2;
  return findings.some((f) => f.severity === "warning") ? 1 : 0;
}

export function formatFindings(findings: readonly Finding[]): string {
  const width = Math.max(...findings.map((f) => f.check.length));
  return findings
    .map(
      (f) => `${f.severity.toUpperCase().padEnd(7)}  ${f.check.padEnd(width)}  ${f.detail}${f.fix === "" ? "" : `\n${" ".repeat(9 + width)}  fix: ${f.fix}`}`,
    )
    .join("\n");
}

interface Listed<T> {
  readonly items: T[];
}

/** istiod's injector ConfigMaps (one per revision) among `configMaps`: whether each carries the podnet template, and its CNI mode. */
export function istioInjectors(
  configMaps: readonly { readonly metadata?: { readonly name?: string }; readonly data?: Readonly<Record<string, string>> }[],
): ClusterSnapshot["injectors"] {
  return configMaps
    .filter((c) => /^istio-sidecar-injector(-.+)?$/.test(c.metadata?.name ?? ""))
    .map((c) => {
      let cniEnabled = false;
      try {
        cniEnabled = (JSON.parse(c.data?.values ?? "{}") as { pilot?: { cni?: { enabled?: boolean } } }).pilot?.cni?.enabled === true;
      } catch {
        cniEnabled = false;
      }
      // The template is a key of the injector config's `templates` map; its waiter image line
      // names the default image last, in backquotes (an annotation may name another).
      const config = c.data?.config ?? "";
      const imageLine = config.split("\n").find((line) => /^\s+image: .*waiter-image/.test(line));
      const waiterImage = [...(imageLine ?? "").matchAll(/`([^`]*)`/g)].pop()?.[1];
      return { name: c.metadata?.name ?? "", hasTemplate: /^\s+podnet:/m.test(config), cniEnabled, ...(waiterImage === undefined ? {} : { waiterImage }) };
    });
}

const eventTime = (e: { lastTimestamp?: Date; eventTime?: Date; metadata?: { creationTimestamp?: Date } }): number =>
  new Date(e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? 0).getTime();
const quantity = (q: string | undefined): number | undefined => (q === undefined || !/^\d+$/.test(q) ? undefined : Number(q));

/**
 * The function's signing keys (Secret entries `<keyid>.pem`, private) whose public half is not in
 * the node-runners' ConfigMap under the same keyid: the runners refuse what they sign.
 */
export function unmatchedSigningKeys(privatePems: Readonly<Record<string, string>>, publicPems: Readonly<Record<string, string>>): string[] {
  const spki = (key: KeyObject): string => key.export({ type: "spki", format: "der" }).toString("base64");
  return Object.entries(privatePems).flatMap(([file, pem]) => {
    const keyid = file.replace(/\.pem$/, "");
    try {
      const published = publicPems[file];
      return published !== undefined && spki(createPublicKey(published)) === spki(createPublicKey(createPrivateKey(pem))) ? [] : [keyid];
    } catch {
      return [keyid];
    }
  });
}

/** The cluster as the checks read it. Parts it may not read (RBAC, not installed) come back empty. */
export async function readSnapshot(kc: KubeConfig, namespace: string, now: number, istioNamespace = "istio-system"): Promise<ClusterSnapshot> {
  const k8s = await import("@kubernetes/client-node");
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const scheduling = kc.makeApiClient(k8s.SchedulingV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  // What is not installed (404) or not ours to read (403) is left out, and the check says so.
  const absent = <T>(read: Promise<T>): Promise<T | undefined> => ifFound(read, [404, 403]);
  const knative = async (group: string, plural: string, name: string): Promise<KnativeObject | undefined> => {
    const o = (await absent(custom.getNamespacedCustomObject({ group, version: "v1", namespace, plural, name }))) as
      { status?: { conditions?: Condition[] }; spec?: { sink?: { audience?: string } } } | undefined;
    return o === undefined ? undefined : { name, conditions: o.status?.conditions ?? [], sinkAudience: o.spec?.sink?.audience };
  };

  const [
    nodes,
    runners,
    fnService,
    pods,
    features,
    injectors,
    daemonSets,
    tls,
    signing,
    publicKeys,
    events,
    policy,
    runnerDs,
    quotas,
    dsEvents,
    istiods,
    serving,
    eventing,
  ] = await Promise.all([
    core.listNode(),
    core.listNamespacedPod({ namespace, labelSelector: "app.kubernetes.io/name=podnet-node-runner" }),
    knative("serving.knative.dev", "services", "podnet-decision"),
    core.listPodForAllNamespaces({ labelSelector: "security.istio.io/tlsMode=istio" }),
    absent(core.readNamespacedConfigMap({ namespace: "knative-eventing", name: "config-features" })),
    absent(core.listNamespacedConfigMap({ namespace: istioNamespace })),
    apps.listDaemonSetForAllNamespaces(),
    absent(core.readNamespacedSecret({ namespace, name: TLS_SECRET_NAME })),
    absent(core.readNamespacedSecret({ namespace, name: "podnet-signing-keys" })),
    absent(core.readNamespacedConfigMap({ namespace, name: "podnet-public-keys" })),
    absent(core.listEventForAllNamespaces({ fieldSelector: "involvedObject.kind=Pod,type=Warning" })),
    absent(core.readNamespacedConfigMap({ namespace, name: POLICY_CONFIGMAP })),
    absent(apps.readNamespacedDaemonSet({ namespace, name: NODE_RUNNER_DAEMONSET })),
    absent(core.listNamespacedResourceQuota({ namespace })),
    absent(core.listNamespacedEvent({ namespace, fieldSelector: "involvedObject.kind=DaemonSet,involvedObject.name=podnet-node-runner,reason=FailedCreate" })),
    absent(apps.listNamespacedDeployment({ namespace: istioNamespace, labelSelector: "app=istiod" })),
    absent(apps.readNamespacedDeployment({ namespace: "knative-serving", name: "controller" })),
    absent(apps.readNamespacedDeployment({ namespace: "knative-eventing", name: "eventing-controller" })),
  ]);
  const priorityClass = runnerDs?.spec?.template.spec?.priorityClassName;
  // Not readable (403): no finding rather than a wrong one.
  const priorityClassExists =
    priorityClass === undefined || (await ifFound(scheduling.readPriorityClass({ name: priorityClass }), [404]).catch(() => true)) !== undefined;
  const failedCreate = (dsEvents?.items ?? []).sort((a, b) => eventTime(b) - eventTime(a))[0]?.message;
  const sources = (
    await Promise.all([knative("sources.knative.dev", "apiserversources", "podnet-pods"), knative("sources.knative.dev", "pingsources", "podnet-resync")])
  ).filter((o): o is KnativeObject => o !== undefined);

  const schedulable = (nodes as Listed<V1Node>).items.filter(
    (n) => n.spec?.unschedulable !== true && (n.metadata?.labels?.["kubernetes.io/os"] ?? "linux") === "linux",
  );
  const lastWarning = lastProjectWarnings(events?.items ?? []);
  const waitingPods = pods.items.flatMap((p) => {
    const waiter = p.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER);
    const started = waiter?.state?.running?.startedAt;
    if (started === undefined) return [];
    const status = readMark(p.metadata?.annotations ?? {}).status;
    return [
      {
        pod: `${p.metadata?.namespace ?? ""}/${p.metadata?.name ?? ""}`,
        waitingSeconds: Math.floor((now - new Date(started).getTime()) / 1000),
        mark: status === STATUS_INITIALIZED || status === STATUS_REFUSED || status === STATUS_SKIPPED ? status : undefined,
        lastWarning: lastWarning.get(p.metadata?.uid ?? "")?.slice(0, 160),
      },
    ];
  });
  return {
    namespace,
    istioNamespace,
    nodes: schedulable.map((n) => n.metadata?.name ?? ""),
    runners: runners.items.map((p) => ({
      node: p.spec?.nodeName ?? "",
      ready: p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true,
    })),
    functionService: fnService,
    sources,
    oidcFeature: features?.data?.["authentication-oidc"],
    injectors: istioInjectors(injectors?.items ?? []),
    istioCniAgents: daemonSets.items
      .filter((d) => d.metadata?.name === "istio-cni-node")
      .map((d) => `${d.metadata?.namespace ?? ""}/${d.metadata?.name ?? ""}`),
    tlsCertificate: tls === undefined ? undefined : (decodedSecretData(tls.data)["tls.crt"] ?? ""),
    signingKeys: signing !== undefined,
    publicKeys: publicKeys !== undefined,
    unmatchedKeys: unmatchedSigningKeys(decodedSecretData(signing?.data), publicKeys?.data ?? {}),
    policyText: policy?.data?.[POLICY_KEY],
    ...(runnerDs === undefined
      ? {}
      : {
          runnerDaemonSet: {
            priorityClassName: priorityClass,
            priorityClassExists,
            image: runnerDs.spec?.template.spec?.containers[0]?.image ?? "",
            desired: runnerDs.status?.desiredNumberScheduled ?? 0,
            scheduled: runnerDs.status?.currentNumberScheduled ?? 0,
          },
        }),
    priorityQuotas: (quotas?.items ?? [])
      .filter(
        (q) =>
          q.spec?.scopeSelector?.matchExpressions?.some(
            (e) => e.scopeName === "PriorityClass" && e.operator === "In" && (e.values ?? []).includes(priorityClass ?? ""),
          ) === true,
      )
      .map((q) => ({ name: q.metadata?.name ?? "", hard: quantity(q.status?.hard?.pods ?? q.spec?.hard?.pods), used: quantity(q.status?.used?.pods) })),
    runnerCreateFailure: failedCreate?.slice(0, 300),
    versions: {
      istio: (istiods?.items ?? []).map((d) => ({ name: d.metadata?.name ?? "", version: d.metadata?.labels?.["app.kubernetes.io/version"] })),
      knative: [
        ...(serving === undefined ? [] : [{ component: "knative-serving", version: serving.metadata?.labels?.["app.kubernetes.io/version"] }]),
        ...(eventing === undefined ? [] : [{ component: "knative-eventing", version: eventing.metadata?.labels?.["app.kubernetes.io/version"] }]),
      ],
    },
    waitingPods,
    now,
  };
}

/** `pnc doctor [-n <namespace>] [--istio-namespace istio-system] [--kubeconfig <file>] [--context <name>] [--json]` */
export async function doctorMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  let values: { namespace: string; "istio-namespace": string; kubeconfig?: string | undefined; context?: string | undefined; json: boolean };
  try {
    values = parseArgs({
      args: [...args],
      options: {
        namespace: { type: "string", short: "n", default: "podnet-system" },
        "istio-namespace": { type: "string", default: "istio-system" },
        json: { type: "boolean", default: false },
        ...CLUSTER_OPTIONS,
      },
    }).values;
  } catch (err) {
    io.stderr(`pnc doctor: ${errorMessage(err)}\nusage: pnc doctor [-n <namespace>] [--istio-namespace istio-system] ${CLUSTER_USAGE} [--json]\n`);
    return 64;
  }
  try {
    const findings = diagnose(await readSnapshot(await loadKubeConfig(values), values.namespace, Date.now(), values["istio-namespace"]));
    io.stdout(values.json ? `${JSON.stringify(findings, null, 2)}\n` : `${formatFindings(findings)}\n`);
    return doctorExitCode(findings);
  } catch (err) {
    io.stderr(`pnc doctor: ${clusterErrorMessage(err)}\n`);
    return err instanceof ClusterConfigError ? 64 : 3;
  }
}
