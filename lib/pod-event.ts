// The Kubernetes Events this project records on pods (NetworkInitialized, NetworkInitFailed),
// one shape for both the function and the node-runner. core/v1 Events: events.k8s.io/v1 needs
// a microsecond eventTime that @kubernetes/client-node cannot send.
import type { CoreV1Event } from "@kubernetes/client-node";
import { ANNOTATION_DOMAIN } from "../contract/mark.ts";
import { apiRequest, type CallOptions, type ApiConnection } from "./kube-http.ts";

export interface PodIdentity {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

function podEvent(
  pod: PodIdentity,
  event: { type: "Normal" | "Warning"; reason: string; message: string },
  source: { component: string; host?: string },
  now = new Date(),
): CoreV1Event {
  return {
    metadata: { generateName: `${pod.name}.` },
    involvedObject: { apiVersion: "v1", kind: "Pod", namespace: pod.namespace, name: pod.name, uid: pod.uid },
    reason: event.reason,
    message: event.message.slice(0, 1024),
    type: event.type,
    source: source.host === undefined ? { component: source.component } : { component: source.component, host: source.host },
    reportingComponent: `${ANNOTATION_DOMAIN}/${source.component}`,
    ...(source.host === undefined ? {} : { reportingInstance: source.host }),
    firstTimestamp: now,
    lastTimestamp: now,
    count: 1,
  };
}

/** Record an Event on a pod (core/v1, in the pod's namespace). */
export async function recordPodEvent(
  conn: ApiConnection,
  pod: PodIdentity,
  event: { type: "Normal" | "Warning"; reason: string; message: string },
  source: { component: string; host?: string },
  options: CallOptions = {},
): Promise<void> {
  await apiRequest(
    conn,
    "POST",
    `/api/v1/namespaces/${encodeURIComponent(pod.namespace)}/events`,
    { contentType: "application/json", value: podEvent(pod, event, source) },
    options,
  );
}
