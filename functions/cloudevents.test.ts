// The function's own reading of ApiServerSource's event shape against the CloudEvents SDK's: on
// random requests (headers near that shape, hostile values, any body), whatever it reads the
// SDK reads to the same id, type, subject and data; whatever the SDK refuses it leaves to the
// SDK; and readCloudEvents answers exactly as the SDK does.
import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http";
import { describe, test } from "node:test";
import { HTTP } from "cloudevents";
import fc from "fast-check";
import { apiServerSourceEvent, meshPodObject } from "../test/support/apiserversource.ts";
import { readBinaryJsonEvent, readCloudEvents, type IncomingEvent } from "./cloudevents.ts";

/** The SDK's reading, as the function used it before: the fields it reads, or the error's message. */
function sdk(headers: IncomingHttpHeaders, body: string): { events: Fields[] } | { error: string } {
  try {
    const parsed = HTTP.toEvent({ headers, body });
    return { events: (Array.isArray(parsed) ? parsed : [parsed]).map((e) => fields(e, { headers, body })) };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

interface Fields {
  id: string;
  type: string | undefined;
  subject: string | undefined;
  data: unknown;
}

/** The fields the function reads; an id the SDK made up (none was sent) as "(generated)". */
function fields(event: IncomingEvent, sent: { headers: IncomingHttpHeaders; body: string }): Fields {
  const id = sent.body.includes(event.id) || Object.values(sent.headers).includes(event.id) ? event.id : "(generated)";
  return { id, type: event.type, subject: event.subject, data: event.data };
}

function ours(headers: IncomingHttpHeaders, body: string): { events: Fields[] } | { error: string } {
  try {
    return { events: readCloudEvents(headers, body).map((e) => fields(e, { headers, body })) };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

const headerValue = fc.oneof(
  fc.constantFrom("", "1.0", "0.3", "application/json", "application/json; charset=utf-8", "application/cloudevents+json", "!!", "aGk="),
  fc.string({ maxLength: 12 }),
);
const headerNames = [
  "content-type",
  "ce-specversion",
  "ce-id",
  "ce-type",
  "ce-source",
  "ce-subject",
  "ce-time",
  "ce-schemaurl",
  "ce-data_base64",
  "ce-data",
  "ce-datacontentencoding",
  "ce-dataschema",
  "ce-kind",
  "ce-__proto__",
] as const;
const randomHeaders = fc.dictionary(fc.constantFrom(...headerNames), headerValue, { maxKeys: headerNames.length });
const randomBody = fc.oneof(fc.json(), fc.string({ maxLength: 40 }), fc.constantFrom("{", "{}", '{"a":1}', "[]", '"x"', "", "{ bad", '{"__proto__":{"x":1}}'));
/** ApiServerSource's own headers, with some replaced by random ones. */
const nearShape = fc.tuple(randomHeaders, randomBody, fc.boolean()).map(([changes, body, keepBody]) => {
  const event = apiServerSourceEvent("update", meshPodObject("web-1"));
  return { headers: { ...event.headers, ...changes }, body: keepBody ? event.body : body };
});
const anyShape = fc.tuple(randomHeaders, randomBody).map(([headers, body]) => ({ headers, body }));

describe("reading CloudEvents", () => {
  test("an ApiServerSource event is read by the function itself, to what the SDK reads", () => {
    const event = apiServerSourceEvent("add", meshPodObject("web-1"));
    const own = readBinaryJsonEvent(event.headers, event.body);
    assert.ok(own !== undefined);
    assert.deepEqual(fields(own, event), (sdk(event.headers, event.body) as { events: Fields[] }).events[0]);
  });

  test("on random requests the function's reading and the SDK's agree, refusals included", () => {
    fc.assert(
      fc.property(fc.oneof(nearShape, anyShape), ({ headers, body }) => {
        const own = readBinaryJsonEvent(headers, body);
        const theirs = sdk(headers, body);
        // What the function reads itself, the SDK reads the same; the SDK's refusals are never read here.
        if (own !== undefined) assert.deepEqual({ events: [fields(own, { headers, body })] }, theirs);
        assert.deepEqual(ours(headers, body), theirs);
      }),
      { numRuns: 3000 },
    );
  });

  test("structured and batch mode go through the SDK", () => {
    const structured = JSON.stringify({ specversion: "1.0", id: "1", source: "s", type: "dev.knative.sources.ping", data: {} });
    const headers = { "content-type": "application/cloudevents+json" };
    assert.equal(readBinaryJsonEvent(headers, structured), undefined);
    assert.deepEqual(ours(headers, structured), sdk(headers, structured));
    const batch = `[${structured},${structured}]`;
    const batchHeaders = { "content-type": "application/cloudevents-batch+json" };
    assert.equal(readCloudEvents(batchHeaders, batch).length, 2);
  });

  test("an unparsable body is refused in the SDK's words", () => {
    const event = apiServerSourceEvent("add", meshPodObject("web-1"));
    const result = ours(event.headers, "{ not json");
    assert.ok("error" in result);
    assert.deepEqual(result, sdk(event.headers, "{ not json"));
  });
});
