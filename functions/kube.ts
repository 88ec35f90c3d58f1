// The decision function's Kubernetes side: read pods (Reference mode) and namespaces (opt-in
// annotation, cached briefly), list mesh pods for resync, and record Warning Events for pods
// whose annotations are invalid.
import * as k8s from "@kubernetes/client-node";
import { podEvent } from "../contract/pod-event.ts";
import type { NamespaceFacts } from "./decision.ts";
import { parsePod, type Pod } from "./pod.ts";
import type { ClusterReader, PodWarningReason } from "./reconcile.ts";

/** Namespace facts change rarely; the legacy opt-in reads them for pods Istio did not inject. */
const NAMESPACE_CACHE_MS = 30_000;
/** Pods per page when a resync lists the mesh pods. */
const LIST_PAGE_SIZE = 500;

export class KubeClusterReader implements ClusterReader {
  private readonly core: k8s.CoreV1Api;
  private readonly namespaces = new Map<string, { facts: NamespaceFacts | undefined; until: number }>();

  constructor(
    kubeConfig: k8s.KubeConfig,
  ) {
    this.core = kubeConfig.makeApiClient(k8s.CoreV1Api);
  }

  async getPod(namespace: string, name: string): Promise<Pod | undefined> {
    try {
      return podFromClient(await this.core.readNamespacedPod({ namespace, name }));
    } catch (err) {
      if (err instanceof k8s.ApiException && err.code === 404) return undefined;
      throw err;
    }
  }

  async getNamespace(name: string): Promise<NamespaceFacts | undefined> {
    const cached = this.namespaces.get(name);
    if (cached !== undefined && cached.until > Date.now()) return cached.facts;
    let facts: NamespaceFacts | undefined;
    try {
      const ns = await this.core.readNamespace({ name });
      facts = { labels: ns.metadata?.labels ?? {}, annotations: ns.metadata?.annotations ?? {} };
    } catch (err) {
      if (!(err instanceof k8s.ApiException && err.code === 404)) throw err;
    }
    this.namespaces.set(name, { facts, until: Date.now() + NAMESPACE_CACHE_MS });
    return facts;
  }

  async *listPods(labelSelector: string): AsyncIterable<Pod[]> {
    let cont: string | undefined;
    do {
      const page = await this.core.listPodForAllNamespaces({ labelSelector, limit: LIST_PAGE_SIZE, ...(cont === undefined ? {} : { _continue: cont }) });
      yield page.items.map(podFromClient);
      cont = page.metadata?._continue;
    } while (cont !== undefined && cont !== "");
  }

  async recordPodWarning(pod: Pod, reason: PodWarningReason, message: string): Promise<void> {
    const namespace = pod.metadata.namespace ?? "default";
    const identity = { namespace, name: pod.metadata.name ?? "", uid: pod.metadata.uid ?? "" };
    await this.core.createNamespacedEvent({ namespace, body: podEvent(identity, { type: "Warning", reason, message }, { component: "decision" }) });
  }

}

/**
 * The client library returns its own model (Date objects for timestamps, no kind/apiVersion on
 * list items); the project's Pod schema reads the JSON form, as events carry it.
 */
function podFromClient(pod: k8s.V1Pod): Pod {
  return parsePod(JSON.parse(JSON.stringify(pod)) as unknown);
}
