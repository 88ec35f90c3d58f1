// The node-runner's Kubernetes side: read the pod named in a request (identity check) — from a
// watch of the pods bound to its node, with a GET only when the watch does not know the pod yet
// — mark it with a merge patch of annotations only, and record Events. Behind small interfaces
// so that the server's logic does not depend on how the API is spoken (kube-http.ts).
import { type PodRef } from "../contract/apply-request.ts";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { recordPodEvent } from "../lib/pod-event.ts";
import { ApiError, apiGetIfExists, apiListAll, apiRequest, podPath, watchStream, type ApiConnection, type WatchEvent } from "../lib/kube-http.ts";

/** A watch is ended by the server after this and resumed from its last version; one silent for longer is broken (watchStream's idle limit). */
const WATCH_SECONDS = 300;
/** Pods per page of the relist (each streamed: the page size bounds requests, not memory). */
const RELIST_PAGE_SIZE = 100;

/** The fields of a Pod the node-runner reads. */
interface PodObject {
  readonly metadata?: {
    readonly name?: string;
    readonly namespace?: string;
    readonly uid?: string;
    readonly resourceVersion?: string;
    readonly deletionTimestamp?: string;
  };
  readonly spec?: { readonly nodeName?: string; readonly hostNetwork?: boolean };
}

export interface PodFacts {
  readonly uid: string;
  readonly nodeName: string | undefined;
  readonly hostNetwork: boolean;
  readonly terminating: boolean;
}

export interface PodApi {
  /** undefined when the pod does not exist. `uid`: the pod the caller expects (a cache may answer for it). */
  getPod(namespace: string, name: string, uid?: string): Promise<PodFacts | undefined>;
  markInitialized(pod: PodRef, mark: { netns: string; rules: string }): Promise<void>;
  clearMark(pod: PodRef): Promise<void>;
  recordEvent(pod: PodRef, event: { type: "Normal" | "Warning"; reason: string; message: string }): Promise<void>;
}

/** What a failed API call means for the request: retry later, or the pod is not what was asked. */
export function apiFailureKind(err: unknown): "not-found" | "conflict" | "unavailable" {
  if (err instanceof ApiError) {
    if (err.code === 404) return "not-found";
    if (err.code === 409) return "conflict";
  }
  return "unavailable";
}

function podFacts(pod: PodObject): PodFacts {
  return {
    uid: pod.metadata?.uid ?? "",
    nodeName: pod.spec?.nodeName,
    hostNetwork: pod.spec?.hostNetwork === true,
    terminating: pod.metadata?.deletionTimestamp !== undefined,
  };
}

/**
 * The pods bound to this node, kept by a watch (field selector spec.nodeName): the identity check
 * of a request costs no API round trip. A pod the watch does not know (yet), or knows under
 * another UID, is read with a GET: the answer is never older than the request's pod.
 */
export class WatchedPodApi implements PodApi {
  /**
   * namespace/name → the facts of the pod, while the watch is current: only what the identity
   * check reads is kept (a node's pods with their specs and annotations would be megabytes).
   */
  private readonly pods = new Map<string, PodFacts>();
  private synced = false;
  private stopped = false;
  private current: { abort: () => void } | undefined;
  private readonly fieldSelector: string;
  private readonly selector: string;

  constructor(
    private readonly conn: ApiConnection,
    nodeName: string,
    private readonly api: PodApi,
    private readonly hooks: {
      /** Where an identity check's answer came from. */
      readonly onRead?: (source: "watch" | "api") => void;
      readonly onWatchError?: (err: unknown) => void;
      /** A relist is done: how many pods are bound to the node. */
      readonly onListed?: (pods: number) => void;
      /** A page of the relist is given up when nothing of it arrives for this long (default 5 s). */
      readonly deadlineMs?: number;
    } = {},
  ) {
    this.fieldSelector = `spec.nodeName=${nodeName}`;
    this.selector = encodeURIComponent(this.fieldSelector);
  }

  /** List, then watch from the list's resourceVersion; on any failure, list again after a pause. */
  start(): void {
    this.relist().catch((err: unknown) => {
      this.failed(err);
    });
  }

  /**
   * The node's pods, a page at a time, each pod streamed and kept only as its facts: memory is
   * one pod's size whatever the node holds (pods of 1.5 MiB stay bound to a node while Failed).
   */
  private async relist(): Promise<void> {
    const seen = new Map<string, PodFacts>();
    const pods = apiListAll(this.conn, "/api/v1/pods", { fieldSelector: this.fieldSelector }, RELIST_PAGE_SIZE, { deadlineMs: this.hooks.deadlineMs ?? 5000 });
    let next = await pods.next();
    while (next.done !== true) {
      const pod = next.value as PodObject;
      seen.set(key(pod), podFacts(pod));
      next = await pods.next();
    }
    this.pods.clear();
    for (const [k, facts] of seen) this.pods.set(k, facts);
    this.synced = true;
    this.hooks.onListed?.(seen.size);
    // The watch goes on from the list's version.
    this.watchFrom(next.value);
  }

  private watchFrom(resourceVersion: string): void {
    if (this.stopped) return;
    let version = resourceVersion;
    this.current = watchStream<PodObject & { code?: number }>(
      this.conn,
      `/api/v1/pods?fieldSelector=${this.selector}&watch=1&allowWatchBookmarks=true&timeoutSeconds=${WATCH_SECONDS}&resourceVersion=${encodeURIComponent(version)}`,
      (event: WatchEvent<PodObject & { code?: number }>) => {
        if (event.type === "ERROR") throw new ApiError(event.object.code ?? 0, "watch error (resourceVersion too old)");
        version = event.object.metadata?.resourceVersion ?? version;
        if (event.type === "DELETED") this.pods.delete(key(event.object));
        else if (event.type !== "BOOKMARK") this.pods.set(key(event.object), podFacts(event.object));
      },
      (err) => {
        if (this.stopped) return;
        if (err === undefined)
          this.watchFrom(version); // the server ended the watch: go on from where it was
        else this.failed(err);
      },
    );
  }

  /** Until the watch is back, every read is a GET; it relists after a pause. */
  private failed(err: unknown): void {
    this.synced = false;
    this.hooks.onWatchError?.(err);
    setTimeout(() => {
      if (!this.stopped) this.start();
    }, 2000).unref();
  }

  stop(): void {
    this.stopped = true;
    this.current?.abort();
  }

  async getPod(namespace: string, name: string, uid?: string): Promise<PodFacts | undefined> {
    const cached = this.synced ? this.pods.get(`${namespace}/${name}`) : undefined;
    if (cached !== undefined && (uid === undefined || cached.uid === uid)) {
      this.hooks.onRead?.("watch");
      return cached;
    }
    this.hooks.onRead?.("api");
    return this.api.getPod(namespace, name);
  }

  markInitialized(pod: PodRef, mark: { netns: string; rules: string }): Promise<void> {
    return this.api.markInitialized(pod, mark);
  }
  clearMark(pod: PodRef): Promise<void> {
    return this.api.clearMark(pod);
  }
  recordEvent(pod: PodRef, event: { type: "Normal" | "Warning"; reason: string; message: string }): Promise<void> {
    return this.api.recordEvent(pod, event);
  }
}

const key = (pod: PodObject): string => `${pod.metadata?.namespace ?? ""}/${pod.metadata?.name ?? ""}`;

export class KubePodApi implements PodApi {
  constructor(
    private readonly conn: ApiConnection,
    private readonly nodeName: string,
    /** Every call's deadline: a frozen API server must not hold a pod's work. */
    private readonly deadlineMs = 5000,
  ) {}

  async getPod(namespace: string, name: string): Promise<PodFacts | undefined> {
    const pod = (await apiGetIfExists(this.conn, podPath(namespace, name), { deadlineMs: this.deadlineMs })) as PodObject | undefined;
    return pod === undefined ? undefined : podFacts(pod);
  }

  async markInitialized(pod: PodRef, mark: { netns: string; rules: string }): Promise<void> {
    await this.patchAnnotations(pod, { [MARK.status]: STATUS_INITIALIZED, [MARK.netns]: mark.netns, [MARK.rules]: mark.rules });
  }

  async clearMark(pod: PodRef): Promise<void> {
    await this.patchAnnotations(pod, { [MARK.status]: null, [MARK.netns]: null, [MARK.rules]: null });
  }

  private async patchAnnotations(pod: PodRef, annotations: Record<string, string | null>): Promise<void> {
    // The UID precondition makes the patch fail rather than mark a re-created pod of the same name.
    await apiRequest(
      this.conn,
      "PATCH",
      podPath(pod.namespace, pod.name),
      { contentType: "application/merge-patch+json", value: { metadata: { uid: pod.uid, annotations } } },
      { deadlineMs: this.deadlineMs },
    );
  }

  async recordEvent(pod: PodRef, event: { type: "Normal" | "Warning"; reason: string; message: string }): Promise<void> {
    await recordPodEvent(this.conn, pod, event, { component: "node-runner", host: this.nodeName }, { deadlineMs: this.deadlineMs });
  }
}
