// The node-runner's Kubernetes side: read the pod named in a request (identity check), mark it
// with a merge patch of annotations only, and record Events. Behind small interfaces so that
// the server's logic does not depend on the client library.
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
  /** undefined when the pod does not exist. */
  getPod(namespace: string, name: string): Promise<PodFacts | undefined>;
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
      const pod = await this.deadline("read pod", this.core.readNamespacedPod({ namespace, name }));
      return {
        uid: pod.metadata?.uid ?? "",
        nodeName: pod.spec?.nodeName,
        hostNetwork: pod.spec?.hostNetwork === true,
        terminating: pod.metadata?.deletionTimestamp !== undefined,
        annotations: pod.metadata?.annotations ?? {},
      };
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
