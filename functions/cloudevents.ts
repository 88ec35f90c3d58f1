// CloudEvents in: what the function reads of a request. Every mode the CloudEvents spec gives
// HTTP (binary, structured, batch) goes through the CloudEvents SDK, except the one shape every
// ApiServerSource and PingSource event has: binary mode, spec version 1.0, a JSON object as
// the body. That one is read here, to the same event: the SDK's binary mode checks nothing more
// (it builds its CloudEvent with validation off), and its generic reading cost about a tenth of
// a skipped event's CPU (docs/performance.md). Anything outside that shape, an unparsable body
// included, is left to the SDK, so that what it accepts or refuses, and how, stays its own;
// functions/cloudevents.test.ts holds the two to the same answers on random requests.
import type { IncomingHttpHeaders } from "node:http";
import { HTTP } from "cloudevents";

/** What the function reads of an event. `type` and `subject` are absent when the sender left them out. */
export interface IncomingEvent {
  readonly id: string;
  readonly type?: string;
  readonly subject?: string;
  readonly data?: unknown;
}

/**
 * Headers whose presence makes the SDK do more than read an attribute (1.0 refuses
 * `schemaurl`; `data_base64` is decoded, and refused when it is not base64): left to it.
 */
const SDK_ONLY_HEADERS = ["ce-schemaurl", "ce-data_base64"] as const;

/** The event of a binary-mode 1.0 request with a JSON object body, or undefined when the request is anything else. */
export function readBinaryJsonEvent(headers: IncomingHttpHeaders, body: string): IncomingEvent | undefined {
  const { "ce-id": id, "ce-type": type, "ce-subject": subject } = headers;
  if (headers["content-type"] !== "application/json" || headers["ce-specversion"] !== "1.0") return undefined;
  if (typeof id !== "string" || id === "" || !optionalString(type) || !optionalString(subject)) return undefined;
  if (SDK_ONLY_HEADERS.some((name) => headers[name] !== undefined)) return undefined;
  // The SDK reads JSON with json-bigint when this is set.
  if (!body.startsWith("{") || process.env.CE_USE_BIG_INT === "true") return undefined;
  let data: unknown;
  try {
    data = JSON.parse(body);
  } catch {
    return undefined; // the SDK's refusal, in its words
  }
  return { id, data, ...(type === undefined ? {} : { type }), ...(subject === undefined ? {} : { subject }) };
}

function optionalString(value: string | string[] | undefined): value is string | undefined {
  return value === undefined || typeof value === "string";
}

/**
 * The events of a request, in any HTTP content mode; throws (the SDK's error) when it holds
 * none. The SDK builds an Error for every check it makes, thrown or not, and each captures a
 * stack trace: only a thrown one's message is used, so none is captured while it reads
 * (synchronous: the limit is back before anything else runs).
 */
export function readCloudEvents(headers: IncomingHttpHeaders, body: string): IncomingEvent[] {
  const binary = readBinaryJsonEvent(headers, body);
  if (binary !== undefined) return [binary];
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    const parsed = HTTP.toEvent({ headers, body });
    return Array.isArray(parsed) ? parsed : [parsed];
  } finally {
    Error.stackTraceLimit = limit;
  }
}
