// CloudEvents shaped exactly as Knative's ApiServerSource adapter sends them in Resource mode
// (binary content mode, lower-case ce- headers, the full object with managedFields), as seen
// by the control-plane smoke test.
import { randomUUID } from "node:crypto";

export function apiServerSourceEvent(
  verb: "add" | "update" | "delete",
  pod: { metadata: { namespace: string; name: string } } & Record<string, unknown>,
  source = "https://10.96.0.1:443",
): { headers: Record<string, string>; body: string } {
  const withManagedFields = {
    apiVersion: "v1",
    kind: "Pod",
    ...pod,
    metadata: {
      ...pod.metadata,
      managedFields: [
        {
          manager: "kubectl-client-side-apply",
          operation: "Update",
          apiVersion: "v1",
          time: "2026-11-25T10:00:00Z",
          fieldsType: "FieldsV1",
          fieldsV1: { "f:metadata": { "f:labels": {} } },
        },
      ],
    },
  };
  return {
    headers: {
      "ce-specversion": "1.0",
      "ce-id": randomUUID(),
      "ce-source": source,
      "ce-type": `dev.knative.apiserver.resource.${verb}`,
      "ce-subject": `/apis/v1/namespaces/${pod.metadata.namespace}/pods/${pod.metadata.name}`,
      "ce-time": new Date().toISOString(),
      "ce-kind": "Pod",
      "ce-apiversion": "v1",
      "ce-name": pod.metadata.name,
      "ce-namespace": pod.metadata.namespace,
      "content-type": "application/json",
    },
    body: JSON.stringify(withManagedFields),
  };
}

export function meshPodObject(
  name: string,
  options: { namespace?: string; uid?: string; node?: string; hostIP?: string; ip?: string; annotations?: Record<string, string> } = {},
) {
  return {
    metadata: {
      name,
      namespace: options.namespace ?? "shop",
      uid: options.uid ?? randomUUID(),
      resourceVersion: String(Math.floor(Math.random() * 1e9)),
      labels: { "security.istio.io/tlsMode": "istio" },
      annotations: { "sidecar.istio.io/status": "{}", ...options.annotations },
    },
    spec: {
      nodeName: options.node ?? "node-a",
      containers: [
        { name: "app", image: "example/app" },
        { name: "istio-proxy", image: "istio/proxyv2" },
      ],
    },
    status: { phase: "Pending", hostIP: options.hostIP ?? "127.0.0.1", podIP: options.ip ?? "10.251.0.10", podIPs: [{ ip: options.ip ?? "10.251.0.10" }] },
  };
}

/** A PingSource tick, as the resync PingSource sends it (binary mode). */
export function pingEvent(): { headers: Record<string, string>; body: string } {
  return {
    headers: {
      "ce-specversion": "1.0",
      "ce-id": randomUUID(),
      "ce-source": "/apis/v1/namespaces/podnet-system/pingsources/podnet-resync",
      "ce-type": "dev.knative.sources.ping",
      "content-type": "application/json",
    },
    body: '{"resync": true}',
  };
}

/** Deliver an event to the function as a source would; the answer's status and JSON body. */
export async function deliver(
  url: string,
  event: { headers: Record<string, string>; body: string },
  token?: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  // The outcome in the answer's body (the adapter asks for none).
  const headers = { ...event.headers, prefer: "return=representation", ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) };
  const res = await fetch(url, { method: "POST", headers, body: event.body });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text };
  }
  return { status: res.status, body };
}
