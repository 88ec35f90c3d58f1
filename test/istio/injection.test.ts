// The project's injection template under Istio's real injector: `istioctl manifest generate`
// renders Istio's own injector configuration (config, values, mesh) with the template under
// sidecarInjectorWebhook.templates and CNI mode on; `istioctl kube-inject` then runs Istio's
// injector (its templates, the strategic merge of custom templates, reorderPod) offline. The
// injected pods go to the real kube-apiserver with Pod Security `restricted` enforced.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments, stringify } from "yaml";
import { deriveCaptureInput } from "../../functions/capture-from-pod.ts";
import { WAITER_COMMAND, WAITER_CONTAINER } from "../../functions/decision.ts";
import { parsePod } from "../../functions/pod.ts";
import { startControlPlane, type ControlPlane } from "../controlplane/harness.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { kubeInject, missingIstioReason, renderInjector, type InjectorFiles } from "../support/istio-injector.ts";

const root = path.resolve(import.meta.dirname, "../..");
const missing = missingIstioReason();

type Container = k8s.V1Container & { restartPolicy?: string };
type Pod = {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { initContainers?: Container[]; containers: Container[]; volumes?: { name: string }[] };
};

const APP_SECURITY = {
  runAsNonRoot: true,
  runAsUser: 1000,
  allowPrivilegeEscalation: false,
  capabilities: { drop: ["ALL"] },
  seccompProfile: { type: "RuntimeDefault" },
};

function appPod(name: string, o: { native: boolean; appInit: boolean; mode: "REDIRECT" | "TPROXY"; templates: string }): Pod {
  return {
    metadata: {
      name,
      annotations: {
        "inject.istio.io/templates": o.templates,
        "sidecar.istio.io/nativeSidecar": String(o.native),
        "sidecar.istio.io/interceptionMode": o.mode,
      },
    },
    spec: {
      ...(o.appInit ? { initContainers: [{ name: "migrate", image: "example/migrate:1", securityContext: APP_SECURITY }] } : {}),
      containers: [{ name: "app", image: "example/app:1", securityContext: APP_SECURITY }],
    },
  };
}

const capsAdded = (c: Container | undefined): string[] => [...(c?.securityContext?.capabilities?.add ?? [])].sort();
const allContainers = (p: Pod): Container[] => [...(p.spec.initContainers ?? []), ...p.spec.containers];

describe("the injection template under Istio's real injector (istioctl kube-inject) [needs control plane]", skipUnlessCI(missing), () => {
  let dir: string;
  let cp: ControlPlane;
  let core: k8s.CoreV1Api;
  let files: InjectorFiles;

  before(async () => {
    assertAvailable(missing);
    dir = mkdtempSync(path.join(os.tmpdir(), "pnct-istio-"));
    files = renderInjector(dir);
    assert.equal(
      (JSON.parse(readFileSync(files.values, "utf8")) as { pilot: { cni: { enabled: boolean } } }).pilot.cni.enabled,
      false,
      "CNI mode off, as the README installs Istio",
    );
    cp = await startControlPlane();
    core = cp.kubeConfig().makeApiClient(k8s.CoreV1Api);
    await core.createNamespace({
      body: {
        metadata: {
          name: "restricted",
          labels: { "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest" },
        },
      },
    });
    await core.createNamespacedServiceAccount({ namespace: "restricted", body: { metadata: { name: "default" } } });
  });
  after(async () => {
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const inject = (pod: Pod): Pod => kubeInject(files, pod);

  for (const native of [true, false]) {
    for (const appInit of [true, false]) {
      for (const mode of ["REDIRECT", "TPROXY"] as const) {
        const name = `${native ? "native" : "classic"}-${appInit ? "appinit" : "noinit"}-${mode.toLowerCase()}`;
        test(`${name}: the waiter runs first, nothing but istio-proxy is privileged, the app is untouched`, async () => {
          const original = appPod(name, { native, appInit, mode, templates: "sidecar,podnet" });
          const pod = inject(original);
          const istioOnly = inject(appPod(`${name}-istio`, { native, appInit, mode, templates: "sidecar" }));
          const inits = pod.spec.initContainers ?? [];
          const waiter = inits[0];

          assert.equal(waiter?.name, WAITER_CONTAINER, `init containers: ${inits.map((c) => c.name).join(", ")}`);
          assert.deepEqual(waiter.command, [WAITER_COMMAND]);
          assert.ok(
            waiter.args?.some((a) => a === "--capture-port=15006"),
            JSON.stringify(waiter.args),
          );
          assert.equal(waiter.restartPolicy, undefined, "the waiter runs to completion");
          assert.ok(!inits.some((c) => c.name === "istio-init"), "no istio-init");
          assert.equal(inits.filter((c) => c.name === WAITER_CONTAINER).length, 1);
          assert.ok(
            waiter.volumeMounts?.some((m) => m.name === "istio-podinfo"),
            "the downward API annotations are mounted",
          );
          assert.ok(
            pod.spec.volumes?.some((v) => v.name === "istio-podinfo"),
            "Istio's template provides the istio-podinfo volume",
          );
          assert.equal(
            native,
            inits.some((c) => c.name === "istio-proxy"),
            "native sidecar: istio-proxy among the init containers",
          );
          if (native) assert.equal(inits[1]?.name, "istio-proxy", "then the native-sidecar proxy, before the app's init containers");
          if (appInit) assert.ok(inits.findIndex((c) => c.name === "migrate") > 0, "the app's init container runs after the waiter");

          // The waiter: the proxy's UID, no capabilities, no privilege.
          const waiterSecurity = waiter.securityContext ?? {};
          assert.equal(waiterSecurity.privileged, false);
          assert.equal(waiterSecurity.allowPrivilegeEscalation, false);
          assert.deepEqual(waiterSecurity.capabilities?.drop, ["ALL"]);
          assert.deepEqual(capsAdded(waiter), []);
          assert.equal(waiterSecurity.runAsUser, 1337);

          // Nothing but istio-proxy may have NET_ADMIN/NET_RAW or privilege, and istio-proxy no
          // more than Istio's own sidecar template gives the same pod.
          for (const c of allContainers(pod)) {
            if (c.name === "istio-proxy") continue;
            assert.deepEqual(capsAdded(c), [], `${c.name} adds capabilities`);
            assert.notEqual(c.securityContext?.privileged, true, `${c.name} is privileged`);
          }
          const proxy = allContainers(pod).find((c) => c.name === "istio-proxy");
          const istiosProxy = allContainers(istioOnly).find((c) => c.name === "istio-proxy");
          assert.deepEqual(capsAdded(proxy), capsAdded(istiosProxy));
          if (mode === "TPROXY")
            assert.deepEqual(capsAdded(proxy), ["NET_ADMIN"], "in TPROXY mode Envoy needs NET_ADMIN for transparent sockets (Istio's own template)");

          // The app's containers exactly as they were.
          for (const c of [...(original.spec.initContainers ?? []), ...original.spec.containers]) {
            assert.deepEqual(allContainers(pod).find((x) => x.name === c.name)?.securityContext, c.securityContext, `${c.name}'s securityContext`);
          }
          assert.equal((pod.spec as { securityContext?: unknown }).securityContext, undefined, "no pod-level securityContext is imposed");

          // Admitted by the real API server under Pod Security restricted: in REDIRECT mode.
          const body = { ...pod, metadata: { ...pod.metadata, namespace: "restricted" } } as unknown as k8s.V1Pod;
          if (mode === "REDIRECT") {
            await core.createNamespacedPod({ namespace: "restricted", body });
          } else {
            await assert.rejects(
              core.createNamespacedPod({ namespace: "restricted", body }),
              (err: unknown) =>
                err instanceof k8s.ApiException && err.code === 403 && /istio-proxy/.test(String(err.body)) && /NET_ADMIN/.test(String(err.body)),
            );
          }
        });
      }
    }
  }

  test("pnc istio-template: the install's waiter image is every injected pod's default, and a pod's own annotation still wins", () => {
    const out = execFileSync(
      process.execPath,
      ["--import", "tsx", path.join(root, "cli/pnc.ts"), "istio-template", "--waiter-image", "registry.example/podnet/waiter:9"],
      {
        cwd: root,
        encoding: "utf8",
      },
    );
    const own = mkdtempSync(path.join(os.tmpdir(), "pnct-template-"));
    try {
      const files = renderInjector(own, { template: out });
      const waiterImage = (pod: Pod): string | undefined => pod.spec.initContainers?.find((c) => c.name === WAITER_CONTAINER)?.image;
      const plain = appPod("own-image", { native: true, appInit: false, mode: "REDIRECT", templates: "sidecar,podnet" });
      assert.equal(waiterImage(kubeInject(files, plain)), "registry.example/podnet/waiter:9");
      // The project's annotation, and its legacy name (read until 0.3); the project's wins.
      const chosen = (name: string, annotations: Record<string, string>): Pod => ({
        ...plain,
        metadata: { ...plain.metadata, name, annotations: { ...plain.metadata.annotations, ...annotations } },
      });
      assert.equal(waiterImage(kubeInject(files, chosen("chosen-image", { "podnet.github.io/waiter-image": "mine/waiter:2" }))), "mine/waiter:2");
      assert.equal(waiterImage(kubeInject(files, chosen("legacy-image", { "podnet.istio.io/waiter-image": "old/waiter:1" }))), "old/waiter:1");
      assert.equal(
        waiterImage(
          kubeInject(files, chosen("both-images", { "podnet.github.io/waiter-image": "mine/waiter:2", "podnet.istio.io/waiter-image": "old/waiter:1" })),
        ),
        "mine/waiter:2",
      );
    } finally {
      rmSync(own, { recursive: true, force: true });
    }
  });

  // README's istioctl path: the user's own IstioOperator (here Istio's OpenShift platform, values
  // of its own) and the overlay `pnc istio-template --istio-operator` prints, merged by istioctl.
  test("istioctl with the user's IstioOperator and the overlay pnc istio-template --istio-operator prints: the template injected (the install's waiter image), CNI mode off, no istio-cni agent, the user's values kept", () => {
    const own = mkdtempSync(path.join(os.tmpdir(), "pnct-operator-"));
    try {
      const overlay = path.join(own, "podnet-istio.yaml");
      writeFileSync(
        overlay,
        execFileSync(
          process.execPath,
          ["--import", "tsx", path.join(root, "cli/pnc.ts"), "istio-template", "--istio-operator", "--waiter-image", "registry.example/podnet/waiter:9"],
          { cwd: root, encoding: "utf8" },
        ),
      );
      const user = path.join(own, "user-operator.yaml");
      writeFileSync(
        user,
        stringify({
          apiVersion: "install.istio.io/v1alpha1",
          kind: "IstioOperator",
          spec: { values: { global: { platform: "openshift", imagePullPolicy: "IfNotPresent", proxy: { holdApplicationUntilProxyStarts: true } } } },
        }),
      );
      const files = renderInjector(own, { operatorFiles: [user, overlay] });
      assert.deepEqual(files.daemonSets, [], "no istio-cni agent");
      const values = JSON.parse(readFileSync(files.values, "utf8")) as {
        pilot: { cni: { enabled: boolean } };
        global: { platform?: string; proxy: { holdApplicationUntilProxyStarts?: boolean; seccompProfile?: { type?: string } } };
      };
      assert.deepEqual(
        [values.pilot.cni.enabled, values.global.platform, values.global.proxy.holdApplicationUntilProxyStarts, values.global.proxy.seccompProfile?.type],
        [false, "openshift", true, "RuntimeDefault"],
      );
      // istiod's webhook applies the config's defaultTemplates (the cluster tests inject that way);
      // kube-inject always defaults to Istio's own, so here the pod names them.
      const config = parseAllDocuments(readFileSync(files.config, "utf8"))[0]?.toJS() as { defaultTemplates: string[] };
      assert.deepEqual(config.defaultTemplates, ["sidecar", "podnet"]);
      const injected = kubeInject(files, appPod("operator-path", { native: true, appInit: false, mode: "REDIRECT", templates: "sidecar,podnet" }));
      const inits = injected.spec.initContainers ?? [];
      const first = inits[0];
      assert.ok(first !== undefined);
      assert.deepEqual([first.name, first.image], [WAITER_CONTAINER, "registry.example/podnet/waiter:9"], "the waiter first, with the install's image");
      assert.equal(
        inits.some((c) => c.name === "istio-init"),
        false,
      );
      assert.equal(injected.metadata.annotations?.["k8s.v1.cni.cncf.io/networks"], undefined, "no Multus network of Istio's on OpenShift");
    } finally {
      rmSync(own, { recursive: true, force: true });
    }
  });

  // Istio's CNI mode changes what Istio's own template renders (istio-init or istio-validation,
  // the capture annotations, on OpenShift a Multus network). The podnet template makes it not
  // matter, so CNI mode stays off and istioctl installs no istio-cni agent.
  test("CNI mode off or on: the same pod (waiter first, capture annotations, proxy), and the function derives the same capture config; off installs no istio-cni agent", () => {
    const proxy = { includeIPRanges: "10.0.0.0/8", excludeIPRanges: "10.1.0.0/16", excludeInboundPorts: "9901" };
    const rendered = (cni: boolean) => {
      const own = mkdtempSync(path.join(os.tmpdir(), `pnct-cni-${String(cni)}-`));
      return { own, files: renderInjector(own, { cni, proxy }) };
    };
    const off = rendered(false);
    const on = rendered(true);
    try {
      assert.deepEqual(off.files.daemonSets, [], "no node agent with CNI mode off");
      assert.deepEqual(on.files.daemonSets, ["istio-cni-node"]);
      for (const mode of ["REDIRECT", "TPROXY"] as const) {
        const pod = appPod(`cni-${mode.toLowerCase()}`, { native: true, appInit: true, mode, templates: "sidecar,podnet" });
        pod.metadata.annotations = { ...pod.metadata.annotations, "traffic.sidecar.istio.io/excludeOutboundPorts": "9000" };
        const a = kubeInject(off.files, pod);
        const b = kubeInject(on.files, pod);
        assert.deepEqual(a.spec, b.spec, mode);
        assert.deepEqual(a.metadata.annotations, b.metadata.annotations, mode);
        const capture = (p: Pod) =>
          deriveCaptureInput(parsePod({ apiVersion: "v1", kind: "Pod", ...p, metadata: { namespace: "shop", uid: "u", ...p.metadata } })).input;
        assert.deepEqual(capture(a), capture(b), mode);
        assert.equal(capture(a).outboundIPRangesInclude, "10.0.0.0/8", "the mesh's values reach the pod without CNI mode");
      }
    } finally {
      rmSync(off.own, { recursive: true, force: true });
      rmSync(on.own, { recursive: true, force: true });
    }
  });

  test("OpenShift (Istio's platform openshift): with CNI mode off no Multus network is named, so pods are created; with it on they would name Istio's", () => {
    for (const cni of [false, true]) {
      const own = mkdtempSync(path.join(os.tmpdir(), "pnct-openshift-"));
      try {
        const files = renderInjector(own, { cni, platform: "openshift" });
        const injected = kubeInject(files, appPod(`openshift-${String(cni)}`, { native: true, appInit: false, mode: "REDIRECT", templates: "sidecar,podnet" }));
        const networks = injected.metadata.annotations?.["k8s.v1.cni.cncf.io/networks"];
        if (cni) assert.match(networks ?? "", /istio-cni/, "Istio's CNI mode on OpenShift names its Multus network");
        else assert.equal(networks, undefined);
      } finally {
        rmSync(own, { recursive: true, force: true });
      }
    }
  });

  test("interception mode NONE: no waiter (no rules will come) and nothing privileged; Istio adds no init container either", () => {
    const pod = appPod("mode-none", { native: true, appInit: true, mode: "REDIRECT", templates: "sidecar,podnet" });
    pod.metadata.annotations = { ...pod.metadata.annotations, "sidecar.istio.io/interceptionMode": "NONE" };
    const injected = inject(pod);
    assert.deepEqual(
      (injected.spec.initContainers ?? []).map((c) => c.name),
      ["istio-proxy", "migrate"],
      "the native-sidecar proxy (Istio puts it first) and the app's init container; no waiter",
    );
    assert.ok(allContainers(injected).every((c) => capsAdded(c).length === 0 && c.securityContext?.privileged !== true));
  });
});
