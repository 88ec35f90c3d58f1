// `pnc status`: the cluster's mesh pods as the project sees them — each pod's mark (initialized
// with its netns and rules, refused with the reason, or none yet), its waiter's state, and the
// last Warning the project recorded about it when it has no mark. What to read first when a pod
// waits. The rows are built by a pure function (podStatusRows); the API calls are at the edge.
import { parseArgs } from "node:util";
import { readMark, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../contract/mark.ts";
import { WAITER_CONTAINER } from "../functions/decision.ts";
import { errorMessage } from "../lib/errors.ts";
import { CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, coreApi } from "./kube-client.ts";

/** The label Istio's injector puts on every pod with a sidecar (the event source selects on it too). */
const MESH_LABEL = "security.istio.io/tlsMode=istio";
/** The project's Warning reasons (node-runner and function), the last of which explains an unmarked pod. */
const PROJECT_WARNINGS = ["NetworkInitFailed", "NetworkInitSkipped"];

interface PodSummary {
  readonly metadata?: { readonly namespace?: string; readonly name?: string; readonly uid?: string; readonly annotations?: Record<string, string> };
  readonly spec?: { readonly nodeName?: string };
  readonly status?: {
    readonly initContainerStatuses?: readonly {
      readonly name?: string;
      readonly restartCount?: number;
      readonly state?: { readonly running?: object; readonly waiting?: { readonly reason?: string }; readonly terminated?: { readonly exitCode?: number } };
    }[];
  };
}
export interface EventSummary {
  readonly involvedObject?: { readonly uid?: string };
  readonly reason?: string;
  readonly message?: string;
  /** RFC 3339 as the API server sends it; a Date as @kubernetes/client-node reads it. */
  readonly lastTimestamp?: string | Date | null;
  readonly eventTime?: string | Date | null;
}

export interface StatusRow {
  readonly namespace: string;
  readonly name: string;
  readonly node: string;
  /** initialized, refused, skipped, or none */
  readonly mark: string;
  /** The waiter's state: running, exited <code>, waiting (<reason>), or - without one. */
  readonly waiter: string;
  /** The rules digest, the refusal's reason, or the last Warning the project recorded. */
  readonly detail: string;
}

/** Each pod's (by UID) latest Warning of the project's, as `<reason>: <message>`. */
export function lastProjectWarnings(events: readonly EventSummary[]): Map<string, string> {
  const latest = new Map<string, { at: string; text: string }>();
  for (const e of events) {
    const uid = e.involvedObject?.uid;
    if (uid === undefined || !PROJECT_WARNINGS.includes(e.reason ?? "")) continue;
    const when = e.lastTimestamp ?? e.eventTime ?? "";
    const at = when instanceof Date ? when.toISOString() : when;
    const seen = latest.get(uid);
    if (seen === undefined || at >= seen.at) latest.set(uid, { at, text: `${e.reason ?? ""}: ${e.message ?? ""}` });
  }
  return new Map([...latest].map(([uid, { text }]) => [uid, text]));
}

/** One row per pod, in namespace/name order. */
export function podStatusRows(pods: readonly PodSummary[], events: readonly EventSummary[]): StatusRow[] {
  const lastWarning = lastProjectWarnings(events);
  return pods
    .map((p): StatusRow => {
      const found = readMark(p.metadata?.annotations ?? {});
      const mark = found.status === STATUS_INITIALIZED || found.status === STATUS_REFUSED || found.status === STATUS_SKIPPED ? found.status : "none";
      const detail =
        mark === STATUS_INITIALIZED
          ? `rules ${found.rules ?? "?"} in netns ${found.netns ?? "?"}`
          : mark === "none"
            ? (lastWarning.get(p.metadata?.uid ?? "") ?? "")
            : (found.reason ?? "");
      return { namespace: p.metadata?.namespace ?? "", name: p.metadata?.name ?? "", node: p.spec?.nodeName ?? "", mark, waiter: waiterState(p), detail };
    })
    .sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
}

function waiterState(p: PodSummary): string {
  const w = p.status?.initContainerStatuses?.find((c) => c.name === WAITER_CONTAINER);
  if (w === undefined) return "-";
  const restarts = (w.restartCount ?? 0) > 0 ? ` (${w.restartCount ?? 0} restarts)` : "";
  if (w.state?.terminated !== undefined) return `exited ${w.state.terminated.exitCode ?? "?"}${restarts}`;
  if (w.state?.running !== undefined) return `running${restarts}`;
  return `waiting${w.state?.waiting?.reason === undefined ? "" : ` (${w.state.waiting.reason})`}${restarts}`;
}

/** Aligned columns; the detail last and cut to a line's width. */
export function formatStatusTable(rows: readonly StatusRow[]): string {
  const header = { namespace: "NAMESPACE", name: "NAME", node: "NODE", mark: "MARK", waiter: "WAITER", detail: "DETAIL" };
  const all = [header, ...rows];
  const width = (key: keyof StatusRow): number => Math.max(...all.map((r) => r[key].length));
  const columns = ["namespace", "name", "node", "mark", "waiter"] as const;
  return all
    .map((r) => {
      const detail = r.detail.length > 120 ? `${r.detail.slice(0, 119)}…` : r.detail;
      return `${columns.map((c) => r[c].padEnd(width(c))).join("  ")}  ${detail}`.trimEnd();
    })
    .join("\n");
}

/** Every item of a list, a page of 500 at a time (the API server's continue token). */
async function listAll<T>(page: (query: { limit: number; _continue?: string }) => Promise<{ items: T[]; metadata?: { _continue?: string } }>): Promise<T[]> {
  const out: T[] = [];
  let token: string | undefined;
  do {
    const list = await page({ limit: 500, ...(token === undefined ? {} : { _continue: token }) });
    out.push(...list.items);
    token = list.metadata?._continue;
  } while (token !== undefined && token !== "");
  return out;
}

export async function statusMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  let values: { namespace?: string | undefined; kubeconfig?: string | undefined; context?: string | undefined; json: boolean };
  try {
    values = parseArgs({
      args: [...args],
      options: { namespace: { type: "string", short: "n" }, json: { type: "boolean", default: false }, ...CLUSTER_OPTIONS },
    }).values;
  } catch (err) {
    io.stderr(`pnc status: ${errorMessage(err)}\nusage: pnc status [-n <namespace>] ${CLUSTER_USAGE} [--json]\n`);
    return 64;
  }
  try {
    const core = await coreApi(values);
    const namespace = values.namespace;
    const pods = await listAll<PodSummary>((page) =>
      namespace === undefined
        ? core.listPodForAllNamespaces({ labelSelector: MESH_LABEL, ...page })
        : core.listNamespacedPod({ namespace, labelSelector: MESH_LABEL, ...page }),
    );
    const events = (
      await Promise.all(
        PROJECT_WARNINGS.map((reason) => {
          const fieldSelector = `involvedObject.kind=Pod,reason=${reason}`;
          return listAll<EventSummary>((page) =>
            namespace === undefined
              ? core.listEventForAllNamespaces({ fieldSelector, ...page })
              : core.listNamespacedEvent({ namespace, fieldSelector, ...page }),
          );
        }),
      )
    ).flat();
    const rows = podStatusRows(pods, events);
    io.stdout(values.json ? `${JSON.stringify(rows, null, 2)}\n` : rows.length === 0 ? "no mesh pods\n" : `${formatStatusTable(rows)}\n`);
    return 0;
  } catch (err) {
    io.stderr(`pnc status: ${clusterErrorMessage(err)}\n`);
    return err instanceof ClusterConfigError ? 64 : 1;
  }
}
