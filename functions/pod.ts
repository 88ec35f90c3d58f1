// The parts of a Kubernetes Pod this project reads, validated where pods enter (events, the
// API, files). Unknown fields pass through untouched; known fields must have the right type.
import { formatSchemaIssues } from "../lib/errors.ts";
import { z } from "zod";

const envVarSchema = z.looseObject({
  name: z.string(),
  value: z.string().optional(),
  valueFrom: z.unknown().optional(),
});

const securityContextSchema = z.looseObject({
  runAsUser: z.number().int().optional(),
  runAsGroup: z.number().int().optional(),
});

const containerSchema = z.looseObject({
  name: z.string(),
  command: z.array(z.string()).nullish(),
  env: z.array(envVarSchema).nullish(),
  securityContext: securityContextSchema.nullish(),
  restartPolicy: z.string().optional(),
});

export const podSchema = z.looseObject({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: z.looseObject({
    name: z.string().optional(),
    namespace: z.string().optional(),
    uid: z.string().optional(),
    resourceVersion: z.string().optional(),
    deletionTimestamp: z.string().nullish(),
    labels: z.record(z.string(), z.string()).nullish(),
    annotations: z.record(z.string(), z.string()).nullish(),
  }),
  spec: z
    .looseObject({
      nodeName: z.string().optional(),
      hostNetwork: z.boolean().optional(),
      containers: z.array(containerSchema).default([]),
      initContainers: z.array(containerSchema).nullish(),
    })
    .default({ containers: [] }),
  status: z
    .looseObject({
      phase: z.string().optional(),
      hostIP: z.string().optional(),
      podIP: z.string().optional(),
      podIPs: z.array(z.looseObject({ ip: z.string() })).nullish(),
      initContainerStatuses: z
        .array(
          z.looseObject({
            name: z.string(),
            restartCount: z.number().int().nonnegative().optional(),
            state: z.looseObject({ running: z.looseObject({ startedAt: z.string().optional() }).optional() }).optional(),
          }),
        )
        .nullish(),
    })
    .optional(),
});

export type Pod = z.infer<typeof podSchema>;
export type Container = z.infer<typeof containerSchema>;

export class PodManifestError extends Error {
  override name = "PodManifestError";
}

/** Validate an object as a Pod, with an error that says which field is wrong. */
export function parsePod(input: unknown): Pod {
  const result = podSchema.safeParse(input);
  if (!result.success) {
    const detail = formatSchemaIssues(result.error, "(pod)");
    throw new PodManifestError(`not a valid Pod: ${detail}`);
  }
  if (result.data.kind !== undefined && result.data.kind !== "Pod") {
    throw new PodManifestError(`expected kind Pod, got ${JSON.stringify(result.data.kind)}`);
  }
  return result.data;
}

export const PROXY_CONTAINER = "istio-proxy";

/** The istio-proxy container, as a regular container or as a native sidecar (init container). */
export function proxyContainer(pod: Pod): Container | undefined {
  return pod.spec.containers.find((c) => c.name === PROXY_CONTAINER) ?? pod.spec.initContainers?.find((c) => c.name === PROXY_CONTAINER);
}

export function podIPs(pod: Pod): string[] {
  const ips = pod.status?.podIPs?.map((p) => p.ip) ?? [];
  if (ips.length === 0 && pod.status?.podIP !== undefined) return [pod.status.podIP];
  return ips;
}
