// The connection to the API server both components use: bearer-token HTTPS with JSON, and lists
// read as streams. Between them they make a handful of calls (the node-runner patches pods and
// creates Events; the function reads pods and namespaces,
// lists mesh pods, creates Events and TokenReviews); @kubernetes/client-node costs about 60 MiB
// of resident memory just to import, more than either component needs in all (docs/performance.md,
// "Memory"), so both speak HTTP themselves.
import { formatHostPort } from "./listen-address.ts";
import { readFileSync } from "node:fs";
import type { ClientRequest, IncomingMessage } from "node:http";
import https from "node:https";
import { DeadlineError } from "./deadline.ts";
import { z } from "zod";
import { formatSchemaIssues } from "./errors.ts";

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
    /** The fields the API server's Status names as the causes (`details.causes[].field`), e.g. `metadata.uid`. */
    readonly causeFields: readonly string[] = [],
  ) {
    super(message);
  }
}

/** The part of a failure Status the clients act on. */
const FailureStatus = z.object({
  message: z.string().optional(),
  details: z.object({ causes: z.array(z.object({ field: z.string().optional() })).optional() }).optional(),
});

export class KubeconfigError extends Error {}

/** In-cluster: the ServiceAccount's token and CA, the API server from the kubelet's environment. */
export function inClusterConnection(env: NodeJS.ProcessEnv = process.env, dir = SERVICE_ACCOUNT_DIR): ApiConnection {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? "443";
  if (host === undefined || host === "") throw new KubeconfigError("not in a cluster: KUBERNETES_SERVICE_HOST is not set (give --kubeconfig)");
  return {
    server: new URL(`https://${formatHostPort(host, port)}`),
    ca: readFileSync(`${dir}/ca.crt`),
    token: () => readFileSync(`${dir}/token`, "utf8").trim(),
  };
}

const kubeconfigSchema = z.looseObject({
  "current-context": z.string().optional(),
  clusters: z.array(
    z.looseObject({
      name: z.string(),
      cluster: z.looseObject({ server: z.url(), "certificate-authority": z.string().optional(), "certificate-authority-data": z.string().optional() }),
    }),
  ),
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
 * each a handshake for the API server and for this process.
 */
export const API_CONNECTIONS = 8;
/** TokenReviews in flight at once: their own connections, so that a flood of them waits there. */
export const REVIEW_CONNECTIONS = 2;
type AgentUse = "calls" | "reviews";
const agents = new WeakMap<ApiConnection, Record<AgentUse, https.Agent>>();
function agentFor(conn: ApiConnection, use: AgentUse): https.Agent {
  let set = agents.get(conn);
  if (set === undefined) {
    const tls = conn.ca === undefined ? {} : { ca: conn.ca };
    set = {
      calls: new https.Agent({ keepAlive: true, maxSockets: API_CONNECTIONS, ...tls }),
      reviews: new https.Agent({ keepAlive: true, maxSockets: REVIEW_CONNECTIONS, ...tls }),
    };
    agents.set(conn, set);
  }
  return set[use];
}

function requestOptions(conn: ApiConnection, method: string, path: string, headers: Record<string, string>, use: AgentUse = "calls"): https.RequestOptions {
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
export async function apiGetIfExists(conn: ApiConnection, path: string, options: CallOptions = {}): Promise<unknown> {
  try {
    return await apiRequest(conn, "GET", path, undefined, options);
  } catch (err) {
    if (err instanceof ApiError && err.code === 404) return undefined;
    throw err;
  }
}

/** How long any call may take, unless its caller says otherwise. */
export const DEFAULT_API_DEADLINE_MS = 5000;
/** The largest answer a single call reads: one object of etcd's maximum (1.5 MiB) with room to spare. Lists are streamed (`apiList`). */
export const MAX_ANSWER_BYTES = 4 * 1024 * 1024;

export interface CallOptions {
  /** The call is abandoned (its request destroyed) after this; default DEFAULT_API_DEADLINE_MS. */
  readonly deadlineMs?: number;
  /** Connections to use: a call's, or the TokenReviews' own (a flood of reviews never takes the pods' connections). */
  readonly use?: "calls" | "reviews";
  /** The media type asked for (default JSON): e.g. an object's metadata only. */
  readonly accept?: string;
}

/**
 * One JSON call; an error status rejects with ApiError (its message the API server's). At the
 * deadline the request is destroyed, not only given up on, and a DeadlineError is the answer.
 */
export function apiRequest(
  conn: ApiConnection,
  method: string,
  path: string,
  body?: { contentType: string; value: unknown },
  options: CallOptions = {},
): Promise<unknown> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body.value));
  const deadlineMs = options.deadlineMs ?? DEFAULT_API_DEADLINE_MS;
  return new Promise((resolve, reject) => {
    const req = https.request(
      requestOptions(
        conn,
        method,
        path,
        {
          ...(options.accept === undefined ? {} : { accept: options.accept }),
          ...(payload === undefined || body === undefined ? {} : { "content-type": body.contentType, "content-length": String(payload.length) }),
        },
        options.use ?? "calls",
      ),
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER_BYTES) {
            req.destroy(new ApiError(0, `${method} ${path}: the answer is larger than ${MAX_ANSWER_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
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
            const failure = FailureStatus.safeParse(json);
            const message = failure.success ? failure.data.message : undefined;
            const causeFields = failure.success ? (failure.data.details?.causes ?? []).flatMap((c) => (c.field === undefined ? [] : [c.field])) : [];
            reject(new ApiError(status, `${method} ${path}: ${status} ${message ?? text.slice(0, 200)}`, causeFields));
          }
        });
        res.on("error", reject);
      },
    );
    cancelAtDeadline(req, deadlineMs, `${method} ${path.split("?")[0] ?? path}`);
    req.on("error", reject);
    req.end(payload);
  });
}

function cancelAtDeadline(req: ClientRequest, ms: number, what: string): void {
  const timer = setTimeout(() => {
    req.destroy(new DeadlineError(`${what} (API server): no answer within ${ms} ms`));
  }, ms);
  timer.unref();
  req.on("close", () => {
    clearTimeout(timer);
  });
}

/** A page of a list: where the next page starts ("" when this was the last) and the list's version. */
export interface ListPage {
  readonly continue: string;
  readonly resourceVersion: string;
}

/**
 * A list read as a stream: each item of `items` is parsed on its own and yielded as it arrives,
 * and the response is read no faster than the caller takes the items, so memory holds about one
 * object at a time whatever the page holds (a node's 250 pods of 1.5 MiB each would be 375 MiB
 * read whole). Returns the page's continue token and version. The deadline bounds silence, not
 * the page: a page of large objects takes the API server seconds to send, and is given up only
 * when nothing arrives for that long.
 */
export async function* apiList(conn: ApiConnection, path: string, options: CallOptions = {}): AsyncGenerator<unknown, ListPage> {
  const req = https.request(requestOptions(conn, "GET", path, {}, "calls"));
  const silenceMs = options.deadlineMs ?? DEFAULT_API_DEADLINE_MS;
  req.setTimeout(silenceMs, () => {
    req.destroy(new DeadlineError(`list ${path.split("?")[0] ?? path} (API server): nothing for ${silenceMs} ms`));
  });
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    req.once("response", resolve);
    req.once("error", reject);
    req.end();
  });
  try {
    const status = res.statusCode ?? 0;
    if (status < 200 || status >= 300) {
      let text = "";
      for await (const chunk of res) if (text.length < 1024) text += String(chunk);
      throw new ApiError(status, `GET ${path}: ${status} ${text.slice(0, 200)}`);
    }
    const items: unknown[] = [];
    const splitter = new ListItemSplitter((item) => items.push(item));
    for await (const chunk of res) {
      splitter.push(chunk as Buffer);
      while (items.length > 0) yield items.shift();
    }
    return splitter.end();
  } finally {
    // A caller that stopped early, or a failure: the rest of the page is not read.
    if (!res.complete) req.destroy();
  }
}

/**
 * Every item of a list, page after page (`limit` per page, each page streamed by `apiList` with
 * its own deadline); returns the first page's resource version (every page is of that version).
 */
export async function* apiListAll(
  conn: ApiConnection,
  path: string,
  query: Record<string, string>,
  limit: number,
  options: CallOptions = {},
): AsyncGenerator<unknown, string> {
  let cont = "";
  let resourceVersion: string | undefined;
  do {
    const params = new URLSearchParams({ ...query, limit: String(limit), ...(cont === "" ? {} : { continue: cont }) });
    const page = yield* apiList(conn, `${path}?${params.toString()}`, options);
    resourceVersion ??= page.resourceVersion;
    cont = page.continue;
  } while (cont !== "");
  return resourceVersion;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

/**
 * Splits a Kubernetes list document ({"kind", "apiVersion", "metadata", "items": [...]}) into its
 * items without parsing the whole: a byte scanner tracks strings and nesting, collects each
 * element of the top-level `items` array and the top-level `metadata` object, and parses each on
 * its own. One item larger than MAX_ANSWER_BYTES is refused.
 */
export class ListItemSplitter {
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** The last string read at depth 1 (a top-level key when followed by a value). */
  private key = "";
  private keyBytes: number[] | undefined;
  /** What is being collected: an item of items, the metadata object, or nothing. */
  private collecting: "item" | "metadata" | undefined;
  private pieces: Buffer[] = [];
  private collectedBytes = 0;
  private inItems = false;
  private metadata: { continue?: unknown; resourceVersion?: unknown } = {};

  constructor(private readonly onItem: (item: unknown) => void) {}

  push(chunk: Buffer): void {
    // Where, in this chunk, what is being collected begins.
    let start = this.collecting === undefined ? -1 : 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i] ?? 0;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) {
          this.inString = false;
          if (this.keyBytes !== undefined) {
            this.key = Buffer.from(this.keyBytes).toString("utf8");
            this.keyBytes = undefined;
          }
        } else if (this.keyBytes !== undefined && this.keyBytes.length < 64) this.keyBytes.push(b);
        continue;
      }
      if (b === QUOTE) {
        this.inString = true;
        if (this.depth === 1 && this.collecting === undefined) this.keyBytes = [];
      } else if (b === OPEN_BRACE || b === OPEN_BRACKET) {
        this.depth++;
        if (this.depth === 2 && b === OPEN_BRACKET && this.key === "items") this.inItems = true;
        else if (this.depth === 2 && b === OPEN_BRACE && this.key === "metadata") start = this.begin("metadata", i);
        else if (this.depth === 3 && this.inItems && b === OPEN_BRACE) start = this.begin("item", i);
      } else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
        this.depth--;
        if (this.depth === 1 && this.inItems && b === CLOSE_BRACKET) this.inItems = false;
        else if ((this.depth === 1 && this.collecting === "metadata") || (this.depth === 2 && this.collecting === "item")) {
          this.finish(chunk.subarray(start, i + 1));
          start = -1;
        }
      }
    }
    if (this.collecting !== undefined && start >= 0) this.keep(chunk.subarray(start));
  }

  /** Starts collecting at `at` of the current chunk; returns `at`. */
  private begin(what: "item" | "metadata", at: number): number {
    this.collecting = what;
    this.pieces = [];
    this.collectedBytes = 0;
    return at;
  }

  private keep(piece: Buffer): void {
    this.collectedBytes += piece.length;
    if (this.collectedBytes > MAX_ANSWER_BYTES) throw new ApiError(0, `a list item is larger than ${MAX_ANSWER_BYTES} bytes`);
    // The chunk's buffer is reused by nothing here, but copied so that it can be released.
    this.pieces.push(Buffer.from(piece));
  }

  private finish(last: Buffer): void {
    this.keep(last);
    const parsed: unknown = JSON.parse(Buffer.concat(this.pieces).toString("utf8"));
    const what = this.collecting;
    this.collecting = undefined;
    this.pieces = [];
    if (what === "metadata") this.metadata = parsed as typeof this.metadata;
    else this.onItem(parsed);
  }

  end(): ListPage {
    if (this.depth !== 0 || this.inString) throw new ApiError(0, "the list ended before its document did");
    const { continue: cont, resourceVersion } = this.metadata;
    return { continue: typeof cont === "string" ? cont : "", resourceVersion: typeof resourceVersion === "string" ? resourceVersion : "" };
  }
}
