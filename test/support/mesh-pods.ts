// A pod in the API server bound to a (simulated) node, with a real sandbox: a test pod whose
// cgroup carries the UID the API assigned, the API status showing the sandbox's IP.
import * as k8s from "@kubernetes/client-node";
import { WAITER_COMMAND, WAITER_CONTAINER } from "../../functions/decision.ts";
import type { TestPod, TestPods } from "./test-pods.ts";

export interface MeshPod {
  readonly name: string;
  readonly namespace: string;
  readonly uid: string;
  readonly ip: string;
  readonly sandbox: TestPod;
}

export async function createMeshPod(
  core: k8s.CoreV1Api,
  pods: TestPods,
  options: {
    namespace: string;
    name: string;
    nodeName: string;
    hostNetwork?: boolean;
    annotations?: Record<string, string>;
    injected?: boolean;
    /** With the injection template's waiter init container (its first init container). */
    waiter?: boolean;
  },
): Promise<MeshPod> {
  const injected = options.injected ?? true;
  const created = await core.createNamespacedPod({
    namespace: options.namespace,
    body: {
      metadata: {
        name: options.name,
        labels: injected ? { "security.istio.io/tlsMode": "istio" } : {},
        annotations: { ...(injected ? { "sidecar.istio.io/status": '{"containers":["istio-proxy"]}' } : {}), ...options.annotations },
      },
      spec: {
        nodeName: options.nodeName,
        hostNetwork: options.hostNetwork ?? false,
        ...(options.waiter === true ? { initContainers: [{ name: WAITER_CONTAINER, image: "podnet/waiter", command: [WAITER_COMMAND] }] } : {}),
        containers: [{ name: "app", image: "example/app" }, ...(injected ? [{ name: "istio-proxy", image: "istio/proxyv2" }] : [])],
      },
    },
  });
  const uid = created.metadata?.uid ?? "";
  const sandbox = pods.add({ name: options.name, uid, ...(options.hostNetwork === undefined ? {} : { hostNetwork: options.hostNetwork }) });
  await core.patchNamespacedPodStatus(
    { name: options.name, namespace: options.namespace, body: { status: { podIP: sandbox.ip, podIPs: [{ ip: sandbox.ip }], hostIP: "127.0.0.1" } } },
    k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
  );
  return { name: options.name, namespace: options.namespace, uid, ip: sandbox.ip, sandbox };
}

/** Wait until the pod's annotations satisfy `check`. */
export async function waitForAnnotations(
  core: k8s.CoreV1Api,
  pod: { namespace: string; name: string },
  check: (a: Record<string, string>) => boolean,
  timeoutMs = 15_000,
): Promise<Record<string, string>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await core.readNamespacedPod({ namespace: pod.namespace, name: pod.name });
    const annotations = p.metadata?.annotations ?? {};
    if (check(annotations)) return annotations;
    if (Date.now() > deadline)
      throw new Error(`pod ${pod.namespace}/${pod.name}: annotations not as expected after ${timeoutMs} ms: ${JSON.stringify(annotations)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait for an Event about the pod (by UID) with this reason: Events follow the work, later. */
export async function waitForPodEvent(
  core: k8s.CoreV1Api,
  pod: { namespace: string; uid: string },
  reason: string,
  timeoutMs = 15_000,
): Promise<k8s.CoreV1Event> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const event = (await core.listNamespacedEvent({ namespace: pod.namespace })).items.find((e) => e.reason === reason && e.involvedObject.uid === pod.uid);
    if (event !== undefined) return event;
    if (Date.now() > deadline) throw new Error(`pod ${pod.namespace} ${pod.uid}: no ${reason} Event after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
