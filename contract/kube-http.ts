// The connection to the API server both components use: bearer-token HTTPS with JSON, and a
// list-then-watch stream. Between them they make a handful of calls (the node-runner watches its
// node's pods, patches annotations and creates Events; the function reads pods and namespaces,
// lists mesh pods, creates Events and TokenReviews); @kubernetes/client-node costs about 60 MiB
// of resident memory just to import, more than either component needs in all (README,
// Performance), so both speak HTTP themselves.
import { readFileSync } from "node:fs";
import https from "node:https";
import { z } from "zod";
import { formatSchemaIssues } from "../contract/errors.ts";

const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** Where the API server is and how to authenticate to it. */
export interface ApiConnection {
  readonly server: URL;
  readonly ca?: Buffer;
  /** The bearer token, read for each call (projected ServiceAccount tokens are rotated on disk). */
  readonly token: () => string;
}

/** A call the API server answered with an error status. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export class KubeconfigError extends Error {}

/** In-cluster: the ServiceAccount's token and CA, the API server from the kubelet's environment. */
export function inClusterConnection(env: NodeJS.ProcessEnv = process.env, dir = SERVICE_ACCOUNT_DIR): ApiConnection {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? "443";
  if (host === undefined || host === "") throw new KubeconfigError("not in a cluster: KUBERNETES_SERVICE_HOST is not set (give --kubeconfig)");
  return {
    server: new URL(`https://${host.includes(":") ? `[${host}]` : host}:${port}`),
    ca: readFileSync(`${dir}/ca.crt`),
    token: () => readFileSync(`${dir}/token`, "utf8").trim(),
  };
}

const kubeconfigSchema = z.looseObject({
  "current-context": z.string().optional(),
  clusters: z.array(z.looseObject({ name: z.string(), cluster: z.looseObject({ server: z.url(), "certificate-authority": z.string().optional(), "certificate-authority-data": z.string().optional() }) })),
  users: z.array(z.looseObject({ name: z.string(), user: z.looseObject({ token: z.string().optional(), tokenFile: z.string().optional() }) })),
  contexts: z.array(z.looseObject({ name: z.string(), context: z.looseObject({ cluster: z.string(), user: z.string() }) })),
});

/** A kubeconfig file with a bearer token (or token file): the only credential the components take. */
export async function kubeconfigConnection(file: string): Promise<ApiConnection> {
  // The YAML parser only for a kubeconfig: in a cluster (the usual case) it is never loaded.
  const { parse: parseYaml } = await import("yaml");
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, "utf8"));
  } catch (err) {
    throw new KubeconfigError(`${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const parsed = kubeconfigSchema.safeParse(raw);
  if (!parsed.success) throw new KubeconfigError(`${file}: ${formatSchemaIssues(parsed.error, "(kubeconfig)")}`);
  const config = parsed.data;
  const context = config.contexts.find((c) => c.name === config["current-context"]) ?? config.contexts[0];
  const cluster = config.clusters.find((c) => c.name === context?.context.cluster)?.cluster;
  const user = config.users.find((u) => u.name === context?.context.user)?.user;
  if (context === undefined || cluster === undefined || user === undefined) throw new KubeconfigError(`${file}: no context with its cluster and user`);
  let ca: Buffer | undefined;
  try {
    ca =
      cluster["certificate-authority-data"] !== undefined
        ? Buffer.from(cluster["certificate-authority-data"], "base64")
        : cluster["certificate-authority"] !== undefined
          ? readFileSync(cluster["certificate-authority"])
          : undefined;
  } catch (err) {
    throw new KubeconfigError(`${file}: the cluster's certificate authority: ${err instanceof Error ? err.message : String(err)}`);
  }
  const { token, tokenFile } = user;
  if (token === undefined && tokenFile === undefined) throw new KubeconfigError(`${file}: the user has no token (only bearer tokens are supported)`);
  return {
    server: new URL(cluster.server),
    ...(ca === undefined ? {} : { ca }),
    token: token !== undefined ? () => token : () => readFileSync(tokenFile ?? "", "utf8").trim(),
  };
}

/**
 * Calls share a few keep-alive connections per API server (client-go multiplexes one HTTP/2
 * connection): a burst of calls queues on them instead of opening a TLS connection per call,
 * each a handshake for the API server and for this process. A watch holds its connection for
 * its lifetime, so watches have their own agent and never take a call's connection.
 */
export const API_CONNECTIONS = 8;
const agents = new WeakMap<ApiConnection, { calls: https.Agent; watches: https.Agent }>();
function agentFor(conn: ApiConnection, use: "calls" | "watches"): https.Agent {
  let pair = agents.get(conn);
  if (pair === undefined) {
    const tls = conn.ca === undefined ? {} : { ca: conn.ca };
    pair = { calls: new https.Agent({ keepAlive: true, maxSockets: API_CONNECTIONS, ...tls }), watches: new https.Agent({ keepAlive: false, ...tls }) };
    agents.set(conn, pair);
  }
  return pair[use];
}

function requestOptions(conn: ApiConnection, method: string, path: string, headers: Record<string, string>, use: "calls" | "watches" = "calls"): https.RequestOptions {
  return {
    protocol: "https:",
    hostname: conn.server.hostname.replace(/^\[|\]$/g, ""),
    port: conn.server.port === "" ? 443 : Number(conn.server.port),
    path,
    method,
    agent: agentFor(conn, use),
    headers: { authorization: `Bearer ${conn.token()}`, accept: "application/json", ...headers },
  };
}

/** The API server named by a kubeconfig file when one is given, else the in-cluster one. */
export async function apiConnection(kubeconfig: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<ApiConnection> {
  return kubeconfig !== undefined && kubeconfig !== "" ? kubeconfigConnection(kubeconfig) : inClusterConnection(env);
}

/** A pod's API path. */
export const podPath = (namespace: string, name: string): string => `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`;

/** A GET whose 404 means "there is none": undefined instead of an error. */
export async function apiGetIfExists(conn: ApiConnection, path: string): Promise<unknown> {
  try {
    return await apiRequest(conn, "GET", path);
  } catch (err) {
    if (err instanceof ApiError && err.code === 404) return undefined;
    throw err;
  }
}

/** One JSON call; an error status rejects with ApiError (its message the API server's). */
export function apiRequest(conn: ApiConnection, method: string, path: string, body?: { contentType: string; value: unknown }): Promise<unknown> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body.value));
  return new Promise((resolve, reject) => {
    const req = https.request(
      requestOptions(conn, method, path, payload === undefined || body === undefined ? {} : { "content-type": body.contentType, "content-length": String(payload.length) }),
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown;
          try {
            json = text === "" ? undefined : JSON.parse(text);
          } catch {
            json = undefined;
          }
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve(json);
          else {
            const message = (json as { message?: unknown } | undefined)?.message;
            reject(new ApiError(status, `${method} ${path}: ${status} ${typeof message === "string" ? message : text.slice(0, 200)}`));
          }
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

export interface WatchEvent<T> {
  readonly type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  readonly object: T;
}

/**
 * A watch stream: one event per line until the server ends it. `done` is called once, with
 * the error when it failed (an error status, or the connection dropped).
 */
export function watchStream<T>(conn: ApiConnection, path: string, onEvent: (event: WatchEvent<T>) => void, done: (err?: unknown) => void): { abort: () => void } {
  let finished = false;
  const finish = (err?: unknown): void => {
    if (finished) return;
    finished = true;
    done(err);
  };
  const req = https.request(requestOptions(conn, "GET", path, {}, "watches"), (res) => {
    if ((res.statusCode ?? 0) !== 200) {
      res.resume();
      finish(new ApiError(res.statusCode ?? 0, `watch ${path}: ${res.statusCode ?? 0}`));
      return;
    }
    let buffered = "";
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => {
      buffered += chunk;
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim() !== "") {
          try {
            onEvent(JSON.parse(line) as WatchEvent<T>);
          } catch (err) {
            req.destroy();
            finish(err);
            return;
          }
        }
        newline = buffered.indexOf("\n");
      }
    });
    res.on("end", () => {
      finish();
    });
    res.on("error", finish);
  });
  req.on("error", finish);
  req.end();
  return {
    abort: () => {
      finished = true;
      req.destroy();
    },
  };
}
