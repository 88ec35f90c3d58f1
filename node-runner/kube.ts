// The node-runner's Kubernetes side: check the pod a request names, mark it with a merge patch of
// annotations only, and record Events. It never reads a pod: RBAC cannot scope a read to one
// node, so it has no get, list or watch at all. The identity check is a patch that changes
// nothing, answered only for a pod bound to this node (the admission policy, with the node name
// from the runner's bound token) and only with the pod's metadata. Behind a small interface so
// that the server's logic does not depend on how the API is spoken (lib/kube-http.ts).
import { z } from "zod";
import { type PodRef } from "../contract/apply-request.ts";
import { CLEAR_LEGACY_MARK, MARK, readMark, refusalReason, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../contract/mark.ts";
import { recordPodEvent } from "../lib/pod-event.ts";
import { ApiError, apiRequest, podPath, type ApiConnection } from "../lib/kube-http.ts";

/**
 * What the API server says of the pod a request names: there, with that UID, bound to this node
 * (`found`); or why not. `detail` is the API server's own message.
 */
export type PodIdentity =
  | {
      readonly kind: "found";
      readonly terminating: boolean;
      /** The mark's status as it is now (`initialized`, `refused`), if any. */ readonly marked?: string;
      /** Where and with which rules, when the mark is `initialized` (its `netns` and `rules`). */
      readonly initializedWith?: { readonly netns: string; readonly rules: string };
    }
  | { readonly kind: "not-found" }
  | { readonly kind: "uid-mismatch"; readonly detail: string }
  | { readonly kind: "not-on-this-node"; readonly detail: string };
/** The pod is what the request says, here. */
export type FoundPod = Extract<PodIdentity, { kind: "found" }>;
/** Why it is not. */
export type MissingPod = Exclude<PodIdentity, { kind: "found" }>;

export interface PodApi {
  /** Throws when the API server cannot say (unavailable, deadline). */
  identify(pod: PodRef): Promise<PodIdentity>;
  markInitialized(pod: PodRef, mark: { netns: string; rules: string }): Promise<void>;
  /** Mark the pod refused with the reason (one line, at most MAX_REFUSAL_REASON characters). */
  markRefused(pod: PodRef, reason: string): Promise<void>;
  /** The mark `skipped` with the policy's reason: the pod's waiter lets it start without interception. */
  markSkipped(pod: PodRef, reason: string): Promise<void>;
  recordEvent(pod: PodRef, event: { type: "Normal" | "Warning"; reason: string; message: string }): Promise<void>;
}

/**
 * What a refused patch of the pod says about it, when it says anything: the pod is gone (404),
 * is another pod of that name (the UID in the patch differs from the pod's, which the API server
 * refuses as a change of an immutable field), or is not this runner's to touch (403: the
 * admission policy, for a pod bound to another node).
 */
export function identityFromApiError(err: unknown): MissingPod | undefined {
  if (!(err instanceof ApiError)) return undefined;
  if (err.code === 404) return { kind: "not-found" };
  if (err.code === 422 && err.causeFields.includes("metadata.uid")) return { kind: "uid-mismatch", detail: err.message };
  if (err.code === 403) return { kind: "not-on-this-node", detail: err.message };
  return undefined;
}

/**
 * The answers are metadata only (a pod may be 1.5 MiB; its metadata is what the check needs):
 * the API server transforms any object it returns when asked so.
 */
export const METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
const PodMetadata = z.object({
  metadata: z.object({ uid: z.string(), deletionTimestamp: z.string().optional(), annotations: z.record(z.string(), z.string()).optional() }),
});

export class KubePodApi implements PodApi {
  constructor(
    private readonly conn: ApiConnection,
    private readonly nodeName: string,
    /** Every call's deadline: a frozen API server must not hold a pod's work. */
    private readonly deadlineMs = 5000,
  ) {}

  /**
   * A merge patch of nothing but the pod's UID: the API server runs admission (the policy
   * refuses a runner any pod not bound to its node) and, the pod unchanged, writes nothing and
   * sends no watch event.
   */
  async identify(pod: PodRef): Promise<PodIdentity> {
    let answer: unknown;
    try {
      answer = await this.patch(pod, {});
    } catch (err) {
      const identity = identityFromApiError(err);
      if (identity === undefined) throw err;
      return identity;
    }
    const parsed = PodMetadata.safeParse(answer);
    if (!parsed.success) throw new ApiError(0, `PATCH ${podPath(pod.namespace, pod.name)}: the answer is not the pod's metadata`);
    if (parsed.data.metadata.uid !== pod.uid) return { kind: "uid-mismatch", detail: `the pod has UID ${parsed.data.metadata.uid}` };
    const mark = readMark(parsed.data.metadata.annotations ?? {});
    return {
      kind: "found",
      terminating: parsed.data.metadata.deletionTimestamp !== undefined,
      ...(mark.status === undefined ? {} : { marked: mark.status }),
      ...(mark.status === STATUS_INITIALIZED ? { initializedWith: { netns: mark.netns ?? "", rules: mark.rules ?? "" } } : {}),
    };
  }

  async markInitialized(pod: PodRef, mark: { netns: string; rules: string }): Promise<void> {
    await this.patchAnnotations(pod, {
      ...CLEAR_LEGACY_MARK,
      [MARK.status]: STATUS_INITIALIZED,
      [MARK.netns]: mark.netns,
      [MARK.rules]: mark.rules,
      [MARK.reason]: null,
    });
  }

  async markRefused(pod: PodRef, reason: string): Promise<void> {
    await this.markWithReason(pod, STATUS_REFUSED, reason);
  }

  async markSkipped(pod: PodRef, reason: string): Promise<void> {
    await this.markWithReason(pod, STATUS_SKIPPED, reason);
  }

  private async markWithReason(pod: PodRef, status: typeof STATUS_REFUSED | typeof STATUS_SKIPPED, reason: string): Promise<void> {
    await this.patchAnnotations(pod, {
      ...CLEAR_LEGACY_MARK,
      [MARK.status]: status,
      [MARK.reason]: refusalReason(reason),
      [MARK.netns]: null,
      [MARK.rules]: null,
    });
  }

  private async patchAnnotations(pod: PodRef, annotations: Record<string, string | null>): Promise<void> {
    await this.patch(pod, { annotations });
  }

  /** The UID in the patch makes it fail rather than touch a re-created pod of the same name. */
  private patch(pod: PodRef, metadata: { annotations?: Record<string, string | null> }): Promise<unknown> {
    return apiRequest(
      this.conn,
      "PATCH",
      podPath(pod.namespace, pod.name),
      { contentType: "application/merge-patch+json", value: { metadata: { uid: pod.uid, ...metadata } } },
      { deadlineMs: this.deadlineMs, accept: METADATA_ONLY },
    );
  }

  async recordEvent(pod: PodRef, event: { type: "Normal" | "Warning"; reason: string; message: string }): Promise<void> {
    await recordPodEvent(this.conn, pod, event, { component: "node-runner", host: this.nodeName }, { deadlineMs: this.deadlineMs });
  }
}

/** The DaemonSet that runs the node-runners (config/node-runner/daemonset.yaml). */
export const NODE_RUNNER_DAEMONSET = "podnet-node-runner";

/**
 * Is the node-runners' DaemonSet being deleted, or gone? Then this process stops for an
 * uninstall, not for a rolling update or a restart, and its state on the node may go. Undefined
 * when the API server cannot say (the state is then kept).
 */
export async function daemonSetLeaving(conn: ApiConnection, namespace: string, deadlineMs: number): Promise<boolean | undefined> {
  try {
    const ds = (await apiRequest(conn, "GET", `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/daemonsets/${NODE_RUNNER_DAEMONSET}`, undefined, {
      deadlineMs,
    })) as { metadata?: { deletionTimestamp?: unknown } } | null;
    return ds?.metadata?.deletionTimestamp !== undefined && ds.metadata.deletionTimestamp !== null;
  } catch (err) {
    return err instanceof ApiError && err.code === 404 ? true : undefined;
  }
}
