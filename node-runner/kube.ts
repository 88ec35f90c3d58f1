// The node-runner's Kubernetes side: read the pod named in a request (identity check) — from a
// watch of the pods bound to its node, with a GET only when the watch does not know the pod yet
// — mark it with a merge patch of annotations only, and record Events. Behind small interfaces
// so that the server's logic does not depend on the client library.
import * as k8s from "@kubernetes/client-node";
import { type PodRef } from "../contract/apply-request.ts";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { withDeadline } from "../contract/deadline.ts";
import { podEvent } from "../contract/pod-event.ts";

export interface PodFacts {
  readonly uid: string;
  readonly nodeName: string | undefined;
  readonly hostNetwork: boolean;
  readonly terminating: boolean;
  readonly annotations: Readonly<Record<string, string>>;
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
  if (err instanceof k8s.ApiException) {
    if (err.code === 404) return "not-found";
    if (err.code === 409) return "conflict";
  }
  return "unavailable";
}

function podFacts(pod: k8s.V1Pod): PodFacts {
  return {
    uid: pod.metadata?.uid ?? "",
    nodeName: pod.spec?.nodeName,
    hostNetwork: pod.spec?.hostNetwork === true,
    terminating: pod.metadata?.deletionTimestamp !== undefined,
    annotations: pod.metadata?.annotations ?? {},
  };
}

/**
 * The pods bound to this node, kept by a watch (field selector spec.nodeName): the identity check
 * of a request costs no API round trip. A pod the watch does not know (yet), or knows under
 * another UID, is read with a GET: the answer is never older than the request's pod.
 */
export class WatchedPodApi implements PodApi {
  private readonly informer: k8s.ListWatch<k8s.V1Pod>;
  private synced = false;
  private stopped = false;

  constructor(
    kubeConfig: k8s.KubeConfig,
    nodeName: string,
    private readonly api: PodApi,
    private readonly onRead: (source: "watch" | "api") => void = () => undefined,
    private readonly onWatchError: (err: unknown) => void = () => undefined,
  ) {
    const core = kubeConfig.makeApiClient(k8s.CoreV1Api);
    const fieldSelector = `spec.nodeName=${nodeName}`;
    this.informer = new k8s.ListWatch("/api/v1/pods", new k8s.Watch(kubeConfig), () => core.listPodForAllNamespaces({ fieldSelector }), false, undefined, fieldSelector);
    this.informer.on("connect", () => {
      this.synced = true;
    });
    this.informer.on("error", (err: unknown) => {
      // Until the watch is back, every read is a GET; it restarts (and relists) after a pause.
      this.synced = false;
      this.onWatchError(err);
      setTimeout(() => {
        if (!this.stopped) {
          this.informer.start().catch((e: unknown) => {
            this.onWatchError(e);
          });
        }
      }, 2000).unref();
    });
  }

  async start(): Promise<void> {
    await this.informer.start();
  }

  stop(): void {
    this.stopped = true;
    void this.informer.stop();
  }

  async getPod(namespace: string, name: string, uid?: string): Promise<PodFacts | undefined> {
    const cached = this.synced ? this.informer.get(name, namespace) : undefined;
    if (cached !== undefined && (uid === undefined || cached.metadata?.uid === uid)) {
      this.onRead("watch");
      return podFacts(cached);
    }
    this.onRead("api");
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

export class KubePodApi implements PodApi {
  private readonly core: k8s.CoreV1Api;

  constructor(
    kubeConfig: k8s.KubeConfig,
    private readonly nodeName: string,
    /** Every call's deadline: a frozen API server must not hold a pod's work. */
    private readonly deadlineMs = 5000,
  ) {
    this.core = kubeConfig.makeApiClient(k8s.CoreV1Api);
  }

  private deadline<T>(what: string, call: Promise<T>): Promise<T> {
    return withDeadline(call, this.deadlineMs, `${what} (API server)`);
  }

  async getPod(namespace: string, name: string): Promise<PodFacts | undefined> {
    try {
      return podFacts(await this.deadline("read pod", this.core.readNamespacedPod({ namespace, name })));
    } catch (err) {
      if (err instanceof k8s.ApiException && err.code === 404) return undefined;
      throw err;
    }
  }

  async markInitialized(pod: PodRef, mark: { netns: string; rules: string }): Promise<void> {
    await this.patchAnnotations(pod, { [MARK.status]: STATUS_INITIALIZED, [MARK.netns]: mark.netns, [MARK.rules]: mark.rules });
  }

  async clearMark(pod: PodRef): Promise<void> {
    await this.patchAnnotations(pod, { [MARK.status]: null, [MARK.netns]: null, [MARK.rules]: null });
  }

  private async patchAnnotations(pod: PodRef, annotations: Record<string, string | null>): Promise<void> {
    // The UID precondition makes the patch fail rather than mark a re-created pod of the same name.
    await this.deadline(
      "patch pod",
      this.core.patchNamespacedPod(
        { namespace: pod.namespace, name: pod.name, body: { metadata: { uid: pod.uid, annotations } } },
        k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
      ),
    );
  }

  async recordEvent(pod: PodRef, event: { type: "Normal" | "Warning"; reason: string; message: string }): Promise<void> {
    await this.deadline("create event", this.core.createNamespacedEvent({ namespace: pod.namespace, body: podEvent(pod, event, { component: "node-runner", host: this.nodeName }) }));
  }

}
