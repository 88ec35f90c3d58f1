// The operator's way to a cluster, as kubectl finds it: a kubeconfig (--kubeconfig, else
// KUBECONFIG's files, else ~/.kube/config) with its contexts, client certificates, exec
// credential plugins (EKS, GKE, AKS), tokens and proxy-url; in a pod (the chart's key Job), its
// ServiceAccount. @kubernetes/client-node does all of that; the long-running components keep
// their own small client (lib/kube-http.ts) because this one costs about 60 MiB to load
// (docs/performance.md, "Memory"), so it is loaded only when a command reaches a cluster.
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { CoreV1Api, KubeConfig } from "@kubernetes/client-node";

/** The options every cluster command takes. */
export const CLUSTER_OPTIONS = { kubeconfig: { type: "string" }, context: { type: "string" } } as const;
export const CLUSTER_USAGE = "[--kubeconfig <file>] [--context <name>]";

export interface ClusterTarget {
  readonly kubeconfig?: string | undefined;
  readonly context?: string | undefined;
}

/** The kubeconfig cannot be found or does not name a usable context. */
export class ClusterConfigError extends Error {}

export async function loadKubeConfig(target: ClusterTarget, env: NodeJS.ProcessEnv = process.env): Promise<KubeConfig> {
  const { KubeConfig } = await import("@kubernetes/client-node");
  const kc = new KubeConfig();
  try {
    if (target.kubeconfig !== undefined && target.kubeconfig !== "") kc.loadFromFile(target.kubeconfig);
    else if ((env.KUBECONFIG ?? "") !== "" || existsSync(path.join(os.homedir(), ".kube", "config"))) kc.loadFromDefault();
    else if ((env.KUBERNETES_SERVICE_HOST ?? "") !== "") kc.loadFromCluster();
    // client-node would fall back to http://localhost:8080; say what is missing instead.
    else throw new ClusterConfigError("no kubeconfig: give --kubeconfig, set KUBECONFIG, or write ~/.kube/config");
  } catch (err) {
    if (err instanceof ClusterConfigError) throw err;
    // One line: the YAML parser's message goes on to draw the offending lines.
    const reason = (err instanceof Error ? err.message : String(err)).split("\n")[0] ?? "";
    throw new ClusterConfigError(`kubeconfig ${target.kubeconfig ?? env.KUBECONFIG ?? "~/.kube/config"}: ${reason}`);
  }
  if (target.context !== undefined) {
    if (kc.getContextObject(target.context) === null) {
      throw new ClusterConfigError(
        `context "${target.context}" is not in the kubeconfig (it has: ${
          kc
            .getContexts()
            .map((c) => c.name)
            .join(", ") || "none"
        })`,
      );
    }
    kc.setCurrentContext(target.context);
  }
  if (kc.getCurrentCluster() === null) throw new ClusterConfigError(`the kubeconfig's current context "${kc.getCurrentContext()}" names no cluster`);
  return kc;
}

export async function coreApi(target: ClusterTarget): Promise<CoreV1Api> {
  const { CoreV1Api } = await import("@kubernetes/client-node");
  return (await loadKubeConfig(target)).makeApiClient(CoreV1Api);
}

/** The HTTP status of an API server's answer, when the error is one. */
export function apiStatusCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "number" && err instanceof Error ? code : undefined;
}

/** The answer, or undefined when the API server answers one of `codes` (not found, by default). */
export async function ifFound<T>(read: Promise<T>, codes: readonly number[] = [404]): Promise<T | undefined> {
  try {
    return await read;
  } catch (err) {
    if (codes.includes(apiStatusCode(err) ?? 0)) return undefined;
    throw err;
  }
}

/**
 * One line for an operator: the API server's own message (client-node's error text carries the
 * whole body and every response header).
 */
export function clusterErrorMessage(err: unknown): string {
  const code = apiStatusCode(err);
  if (code === undefined) return err instanceof Error ? err.message : String(err);
  const body = (err as { body?: unknown }).body;
  let message: unknown;
  try {
    message = (typeof body === "string" ? (JSON.parse(body) as { message?: unknown }) : (body as { message?: unknown } | undefined))?.message;
  } catch {
    message = undefined;
  }
  // Without a body (client-node drops a 401's), the text client-node gives the status ("Unauthorized").
  if (typeof message !== "string" || message === "") message = /^Message: (.+)$/m.exec(err instanceof Error ? err.message : "")?.[1];
  return `the API server answered ${code}${typeof message === "string" && message !== "" ? `: ${message}` : ""}`;
}
