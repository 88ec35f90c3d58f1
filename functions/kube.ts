// The decision function's Kubernetes side: read pods (Reference mode) and namespaces (opt-in
// annotation, cached briefly), list mesh pods for resync, and record Warning Events for pods
// whose annotations are invalid. Spoken over the shared small client (lib/kube-http.ts).
import { ApiError, apiGetIfExists, apiListAll, podPath, type ApiConnection } from "../lib/kube-http.ts";
import { recordPodEvent } from "../lib/pod-event.ts";
import type { NamespaceFacts } from "./decision.ts";
import { parsePod, type Pod } from "./pod.ts";
import type { ClusterReader, PodWarningReason } from "./reconcile.ts";

/** Namespace facts change rarely; the legacy opt-in reads them for pods Istio did not inject. */
const NAMESPACE_CACHE_MS = 30_000;
/** Pods per page when a resync lists the mesh pods (streamed: the size bounds requests, not memory). */
const LIST_PAGE_SIZE = 500;
/** A page is given up when nothing of it arrives for this long (its pods' reconciles included). */
const LIST_PAGE_DEADLINE_MS = 60_000;

interface ObjectMeta {
  readonly labels?: Record<string, string>;
  readonly annotations?: Record<string, string>;
}

export class KubeClusterReader implements ClusterReader {
  private readonly namespaces = new Map<string, { facts: NamespaceFacts | undefined; until: number }>();

  constructor(private readonly conn: ApiConnection) {}

  async getPod(namespace: string, name: string, notOlderThan?: string): Promise<Pod | undefined> {
    const path = podPath(namespace, name);
    // A resource version other than "0" asks for the pod as of that version or later, which the
    // API server answers from its watch cache instead of a quorum read from etcd. One it has not
    // reached (an event that named a version of its own making) is refused after a wait: then
    // the pod is read as it is now.
    const cached = notOlderThan !== undefined && /^[1-9][0-9]{0,19}$/.test(notOlderThan) ? `${path}?resourceVersion=${notOlderThan}` : undefined;
    const pod = await apiGetIfExists(this.conn, cached ?? path).catch((err: unknown) => {
      if (cached !== undefined && err instanceof ApiError && err.code === 504 && /too large resource version/i.test(err.message))
        return apiGetIfExists(this.conn, path);
      throw err;
    });
    return pod === undefined ? undefined : parsePod(pod);
  }

  async getNamespace(name: string): Promise<NamespaceFacts | undefined> {
    const cached = this.namespaces.get(name);
    if (cached !== undefined && cached.until > Date.now()) return cached.facts;
    const ns = (await apiGetIfExists(this.conn, `/api/v1/namespaces/${encodeURIComponent(name)}`)) as { metadata?: ObjectMeta } | undefined;
    const facts: NamespaceFacts | undefined = ns === undefined ? undefined : { labels: ns.metadata?.labels ?? {}, annotations: ns.metadata?.annotations ?? {} };
    this.namespaces.set(name, { facts, until: Date.now() + NAMESPACE_CACHE_MS });
    return facts;
  }

  /**
   * Pages of LIST_PAGE_SIZE, each streamed: every pod is yielded as soon as it is read, and the
   * page is read no faster than the pods are reconciled, so memory holds about one pod, however
   * large the pods or the cluster.
   */
  async *listPods(labelSelector: string): AsyncIterable<Pod[]> {
    // List items carry no kind/apiVersion; the Pod schema reads the object itself.
    for await (const item of apiListAll(this.conn, "/api/v1/pods", { labelSelector }, LIST_PAGE_SIZE, { deadlineMs: LIST_PAGE_DEADLINE_MS }))
      yield [parsePod(item)];
  }

  async recordPodWarning(pod: Pod, reason: PodWarningReason, message: string): Promise<void> {
    const namespace = pod.metadata.namespace ?? "default";
    const identity = { namespace, name: pod.metadata.name ?? "", uid: pod.metadata.uid ?? "" };
    await recordPodEvent(this.conn, identity, { type: "Warning", reason, message }, { component: "decision" });
  }
}
