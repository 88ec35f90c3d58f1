// The largest objects a cluster accepts, for the budget tests (issue 27): etcd stores at most
// 1.5 MiB per object (the API server refuses a larger pod), and an object's annotations may
// hold at most 256 KiB (apimachinery's TotalAnnotationSizeLimitB). Nothing else bounds how
// many containers or env entries a pod has.
import { randomUUID } from "node:crypto";

export const MAX_OBJECT_BYTES = 1536 * 1024;
export const MAX_ANNOTATIONS_BYTES = 256 * 1024;

/** What fills the pod up to the object limit. */
export type Fill = "containers" | "env" | "none";

export interface LargePodOptions {
  readonly name?: string;
  readonly namespace?: string;
  readonly node?: string;
  readonly annotations: Record<string, string>;
  readonly fill?: Fill;
  /** Total size to reach (default: a little under the object limit). */
  readonly bytes?: number;
}

/** A sidecar-injected pod as the API server would return it, as large as `bytes`. */
export function largestPod(options: LargePodOptions) {
  const proxy: { name: string; image: string; env: { name: string; value: string }[] } = { name: "istio-proxy", image: "istio/proxyv2", env: [] };
  const containers: { name: string; image: string; env?: { name: string; value: string }[] }[] = [{ name: "app", image: "example/app" }, proxy];
  const pod = {
    metadata: {
      name: options.name ?? `large-${randomUUID().slice(0, 8)}`,
      namespace: options.namespace ?? "shop",
      uid: randomUUID(),
      resourceVersion: "1",
      labels: { "security.istio.io/tlsMode": "istio" },
      annotations: { "sidecar.istio.io/status": "{}", ...options.annotations },
    },
    spec: { nodeName: options.node ?? "node-a", containers },
    status: { phase: "Running", hostIP: "10.0.0.1", podIP: "10.251.0.10", podIPs: [{ ip: "10.251.0.10" }] },
  };
  const target = (options.bytes ?? MAX_OBJECT_BYTES - 4096) - JSON.stringify(pod).length;
  const fill = options.fill ?? "containers";
  if (fill === "none" || target <= 0) return pod;
  const value = "v".repeat(1000);
  if (fill === "env") {
    // One container's env: thousands of entries.
    const count = Math.floor(target / (value.length + 40));
    for (let i = 0; i < count; i++) proxy.env.push({ name: `VAR_${i}`, value });
  } else {
    // Many containers with a few env entries each.
    const per = { name: "c-00000", image: "example/filler", env: [{ name: "FILLER", value }] };
    const count = Math.floor(target / (JSON.stringify(per).length + 1));
    for (let i = 0; i < count; i++) containers.push({ name: `c-${i}`, image: "example/filler", env: [{ name: "FILLER", value }] });
  }
  return pod;
}
