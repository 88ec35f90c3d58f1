// The waiter (docs/architecture.md §9): the pod's first init container, UID of the proxy, no
// capabilities, no API token. It proves, every few ms, that redirection works in its own
// network namespace and exits 0 as soon as it does, so that Envoy and the application start
// only with interception in place. A stale or forged annotation cannot fool the probe, and the
// kubelet's late refresh of the annotations file costs nothing; the file still tells it why it
// waits (not yet marked, marked for another netns after a sandbox re-creation) and, without a
// probe, is the signal.
import { readFile, readlink, watch } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { ISTIO_TRAFFIC_ANNOTATION } from "../contract/istio-annotations.ts";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { errorMessage } from "../contract/errors.ts";

/** Exit codes, documented in the README. */
export const WAIT_EXIT = {
  ok: 0,
  timeout: 10,
  probeFailed: 11,
  badAnnotations: 12,
  ownNetnsUnknown: 13,
  usage: 64,
} as const;

/** kubelet caps annotations at 256 KiB; anything much larger is not a kubelet file. */
export const MAX_ANNOTATIONS_FILE_BYTES = 1024 * 1024;

export class AnnotationsFileError extends Error {
  override name = "AnnotationsFileError";
}

/**
 * Parse kubelet's downward API annotations file: one `key="value"` line per annotation, the
 * value quoted as Go's strconv.Quote does (escapes \a \b \f \n \r \t \v \\ \" \xHH \ooo
 * \uHHHH \UHHHHHHHH).
 */
export function parseAnnotationsFile(text: string): Map<string, string> {
  if (Buffer.byteLength(text) > MAX_ANNOTATIONS_FILE_BYTES) throw new AnnotationsFileError(`annotations file larger than ${MAX_ANNOTATIONS_FILE_BYTES} bytes`);
  const out = new Map<string, string>();
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  lines.forEach((line, i) => {
    const eq = line.indexOf("=");
    if (eq <= 0) throw new AnnotationsFileError(`line ${i + 1}: expected key="value"`);
    const key = line.slice(0, eq);
    if (!/^[A-Za-z0-9][A-Za-z0-9_./-]*$/.test(key)) throw new AnnotationsFileError(`line ${i + 1}: invalid annotation key`);
    out.set(key, unquoteGo(line.slice(eq + 1), i + 1));
  });
  return out;
}

const SIMPLE_ESCAPES: Record<string, string> = { a: "\x07", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t", v: "\v", "\\": "\\", '"': '"', "'": "'" };

function unquoteGo(quoted: string, line: number): string {
  const bad = (why: string): never => {
    throw new AnnotationsFileError(`line ${line}: ${why}`);
  };
  if (quoted.length < 2 || !quoted.startsWith('"') || !quoted.endsWith('"')) bad("value is not a quoted string");
  const body = quoted.slice(1, -1);
  const bytes: number[] = [];
  const pushText = (s: string): void => {
    bytes.push(...Buffer.from(s, "utf8"));
  };
  for (let i = 0; i < body.length; i++) {
    const c = body[i] as string;
    if (c === '"') bad("unescaped quote inside the value");
    if (c !== "\\") {
      pushText(c);
      continue;
    }
    const e = body[++i];
    if (e === undefined) bad("dangling backslash");
    const simple = SIMPLE_ESCAPES[e as string];
    if (simple !== undefined) {
      pushText(simple);
    } else if (e === "x" || e === "u" || e === "U") {
      const n = e === "x" ? 2 : e === "u" ? 4 : 8;
      const hex = body.slice(i + 1, i + 1 + n);
      if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) bad(`bad \\${e} escape`);
      const value = parseInt(hex, 16);
      if (e === "x") bytes.push(value);
      else if (value > 0x10ffff || (value >= 0xd800 && value <= 0xdfff)) bad("escape is not a Unicode code point");
      else pushText(String.fromCodePoint(value));
      i += n;
    } else if (e !== undefined && /[0-7]/.test(e)) {
      const oct = body.slice(i, i + 3);
      if (!/^[0-7]{3}$/.test(oct)) bad("bad octal escape");
      const value = parseInt(oct, 8);
      if (value > 255) bad("octal escape above \\377");
      bytes.push(value);
      i += 2;
    } else {
      bad(`unknown escape \\${e ?? ""}`);
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

/** The inode of a network namespace link such as /proc/self/ns/net ("net:[4026532246]"). */
export async function netnsInodeOf(link: string): Promise<string> {
  const target = await readlink(link);
  const m = /^net:\[(\d+)\]$/.exec(target);
  if (m?.[1] === undefined) throw new Error(`${link} is not a network namespace link: ${target}`);
  return m[1];
}

export type MarkState = "initialized" | "not-yet" | "other-netns";

/** Is the pod marked initialized for this netns? */
export function markState(annotations: ReadonlyMap<string, string>, ownInode: string): MarkState {
  if (annotations.get(MARK.status) !== STATUS_INITIALIZED) return "not-yet";
  return annotations.get(MARK.netns) === ownInode ? "initialized" : "other-netns";
}

/**
 * Prove that outbound redirection works from this netns: listen on the inbound capture port and
 * connect, as the proxy's UID, to a loopback address and port where nothing listens. Istio's
 * rules send the proxy's own loopback traffic to a non-127.0.0.1 address through
 * ISTIO_IN_REDIRECT, so only a working redirect can complete the connection.
 */
export async function probeInterception(options: { capturePort: number; target: { host: string; port: number }; timeoutMs: number }): Promise<{ ok: true } | { ok: false; reason: string }> {
  const token = `podnet-probe-${process.pid}-${Date.now()}`;
  const server = net.createServer((socket) => {
    socket.end(token);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.capturePort, "127.0.0.1", resolve);
    });
  } catch (err) {
    return { ok: false, reason: `cannot listen on 127.0.0.1:${options.capturePort}: ${errorMessage(err)}` };
  }
  try {
    return await new Promise((resolve) => {
      let received = "";
      const socket = net.connect(options.target.port, options.target.host);
      socket.setTimeout(options.timeoutMs, () => {
        socket.destroy();
        resolve({ ok: false, reason: `no answer from ${options.target.host}:${options.target.port} within ${options.timeoutMs} ms` });
      });
      socket.on("data", (c: Buffer) => (received += c.toString()));
      socket.on("end", () => {
        resolve(received === token ? { ok: true } : { ok: false, reason: "a connection completed, but not through the capture port" });
      });
      socket.on("error", (err: NodeJS.ErrnoException) => {
        resolve({ ok: false, reason: `connection to ${options.target.host}:${options.target.port} was not redirected (${err.code ?? err.message})` });
      });
    });
  } finally {
    server.close();
  }
}

/**
 * The port the probe connects to: `preferred`, unless the pod's capture excludes it from
 * outbound capture (Istio returns those before its loopback rule), then the next lower port
 * that is neither excluded nor one Istio's loopback rule itself exempts (53, 15008). Null when
 * every outbound port is excluded ("*"): no probe can pass, the annotation is the signal.
 */
export function probePortFor(preferred: number, excludeOutboundPorts: string | undefined): number | null {
  const listed = (excludeOutboundPorts ?? "").split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (listed.includes("*")) return null;
  const excluded = new Set([53, 15008, ...listed.map(Number).filter(Number.isInteger)]);
  for (let port = preferred; port > 1024; port--) if (!excluded.has(port)) return port;
  return null;
}

export interface WaitOptions {
  readonly annotationsFile: string;
  readonly timeoutMs: number;
  /** Re-read interval of the annotations file (besides file events) when there is no probe. */
  readonly pollMs: number;
  /** How often the probe is tried: the probe, not the annotation, is the signal. */
  readonly probeIntervalMs?: number;
  readonly probe: { capturePort: number; target: { host: string; port: number }; timeoutMs: number } | null;
  readonly ownNetnsLink: string;
  readonly log: (line: string) => void;
}

export type WaitResult = { code: number; reason: string };

/**
 * How long the probe may keep failing once the pod is marked for this netns: the mark is written
 * after the rules, so a mark without working rules is a spoof or a broken apply.
 */
const MARKED_WITHOUT_INTERCEPTION_MS = 2000;

/** The probe for this pod: its target moved off a port the pod's capture excludes (annotations file as the container starts). */
async function probeForPod(options: WaitOptions): Promise<WaitOptions["probe"]> {
  if (options.probe === null) return null;
  let excluded: string | undefined;
  try {
    excluded = parseAnnotationsFile(await readFile(options.annotationsFile, "utf8")).get(ISTIO_TRAFFIC_ANNOTATION.excludeOutboundPorts);
  } catch {
    excluded = undefined; // no file yet or not readable: the wait loop reports it
  }
  const port = probePortFor(options.probe.target.port, excluded);
  if (port === null) {
    options.log("every outbound port is excluded from capture: no probe can pass, waiting for the mark");
    return null;
  }
  if (port !== options.probe.target.port) options.log(`outbound port ${options.probe.target.port} is excluded from capture: probing ${options.probe.target.host}:${port}`);
  return { ...options.probe, target: { ...options.probe.target, port } };
}

/**
 * Wait until redirection works in this network namespace, proven by the probe every few ms
 * (the annotation the kubelet refreshes late is not waited for); without a probe, wait for the
 * mark naming this netns. Resolves with the exit code and a one-line reason.
 */
export async function waitForInterception(options: WaitOptions): Promise<WaitResult> {
  let own: string;
  try {
    own = await netnsInodeOf(options.ownNetnsLink);
  } catch (err) {
    return { code: WAIT_EXIT.ownNetnsUnknown, reason: `cannot read this pod's network namespace: ${errorMessage(err)}` };
  }
  const probe = await probeForPod(options);
  const deadline = Date.now() + options.timeoutMs;
  const abort = new AbortController();
  // Wake on changes to the file's directory (kubelet swaps a symlink), or at the interval.
  let wake: () => void = () => undefined;
  const watcher = (async () => {
    try {
      const events = watch(path.dirname(options.annotationsFile), { signal: abort.signal });
      for await (const _event of events) wake();
    } catch {
      // aborted, or watching unsupported: polling still works
    }
  })();
  let lastState: MarkState | undefined;
  let markedSince: number | undefined;
  let lastProbe = "not tried";
  try {
    for (;;) {
      if (probe !== null) {
        const tried = await probeInterception({ ...probe, timeoutMs: Math.max(1, Math.min(probe.timeoutMs, deadline - Date.now())) });
        if (tried.ok) {
          return { code: WAIT_EXIT.ok, reason: lastState === "initialized" ? "initialized; interception verified" : "interception verified (before the mark reached this pod)" };
        }
        lastProbe = tried.reason;
      }
      let state: MarkState;
      try {
        const text = await readFile(options.annotationsFile, "utf8");
        state = markState(parseAnnotationsFile(text), own);
      } catch (err) {
        if (err instanceof AnnotationsFileError) return { code: WAIT_EXIT.badAnnotations, reason: `malformed annotations file ${options.annotationsFile}: ${err.message}` };
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== "ENOENT") return { code: WAIT_EXIT.badAnnotations, reason: `cannot read ${options.annotationsFile}: ${code ?? String(err)}` };
        state = "not-yet";
      }
      if (state !== lastState) options.log(`waiting: ${state === "other-netns" ? "the mark names another network namespace (sandbox re-created)" : state} (own netns ${own})`);
      lastState = state;
      if (state === "initialized") {
        if (probe === null) return { code: WAIT_EXIT.ok, reason: options.probe === null ? "initialized (probe disabled)" : "initialized (no probe possible: every outbound port is excluded)" };
        markedSince ??= Date.now();
        if (Date.now() - markedSince > MARKED_WITHOUT_INTERCEPTION_MS) return { code: WAIT_EXIT.probeFailed, reason: `marked initialized but interception does not work: ${lastProbe}` };
      } else {
        markedSince = undefined;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        return { code: WAIT_EXIT.timeout, reason: `timed out after ${options.timeoutMs} ms: interception not in place in network namespace ${own} (mark: ${state}; probe: ${lastProbe})` };
      }
      const interval = probe === null ? options.pollMs : (options.probeIntervalMs ?? 10);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(interval, left));
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  } finally {
    abort.abort();
    await watcher;
  }
}
