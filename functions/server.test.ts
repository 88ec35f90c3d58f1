// The function's HTTP side with events exactly as ApiServerSource sends them. Skips and
// refusals never reach the dispatcher or the API: the guards fail the test if they do.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { pino } from "pino";
import request from "supertest";
import { MARK, STATUS_INITIALIZED } from "../contract/mark.ts";
import { apiServerSourceEvent, meshPodObject } from "../test/support/apiserversource.ts";
import { WAITER_COMMAND, type ReleaseDecision } from "./decision.ts";

import { parsePod } from "./pod.ts";
import { parsePolicy } from "./policy.ts";
import { createFunctionMetrics } from "./metrics.ts";
import { SenderAuthenticator } from "./sender-auth.ts";
import { createFunctionApp, wantsRepresentation } from "./server.ts";

const unreachable = (what: string) => (): never => assert.fail(`${what} must not be reached`);
const metrics = createFunctionMetrics({ defaultMetrics: false });
const dryRun = parsePolicy("mode: dry-run");

const app = createFunctionApp({
  policy: () => dryRun,
  dispatcher: { send: unreachable("dispatcher") },
  cluster: {
    // The API server's view of a pod to act on: the event is only a trigger.
    getPod: (_namespace, name) => Promise.resolve(parsePod(meshPodObject(name))),
    getNamespace: () => Promise.resolve(undefined),
    listPods: unreachable("pod list"),
    recordPodWarning: unreachable("events"),
  },
  log: pino({ level: "silent" }),
  metrics,
});

/** Asks for the outcome in the body, which an answer without a Prefer header leaves out. */
const REPRESENTATION = { prefer: "return=representation" };

function post(event: { headers: Record<string, string>; body: string }) {
  return request(app)
    .post("/")
    .set({ ...event.headers, ...REPRESENTATION })
    .send(event.body);
}

describe("decision function: events as ApiServerSource sends them", () => {
  test("an add for a mesh pod is decided (dry-run: logged, not applied)", async () => {
    const res = await post(apiServerSourceEvent("add", meshPodObject("web-1")));
    assert.equal(res.status, 200);
    assert.deepEqual((res.body as { results: unknown[] }).results, [{ pod: "shop/web-1", outcome: "dry-run", reason: "needs-rules" }]);
    assert.equal(res.headers.etag, undefined, "no ETag: nothing revalidates an answer");
  });

  test("updates of initialized pods, deletes and non-mesh pods are skipped with reasons", async () => {
    const marked = meshPodObject("web-2", { annotations: { [MARK.status]: STATUS_INITIALIZED } });
    const plain = { ...meshPodObject("plain"), spec: { nodeName: "node-a", containers: [{ name: "app" }] } };
    for (const [event, reason] of [
      [apiServerSourceEvent("update", marked), "already-initialized"],
      [apiServerSourceEvent("delete", meshPodObject("gone")), "deleted"],
      [apiServerSourceEvent("add", plain), "not-sidecar-injected"],
    ] as const) {
      const res = await post(event);
      assert.equal(res.status, 200);
      assert.equal((res.body as { results: { reason: string }[] }).results[0]?.reason, reason);
    }
  });

  test("a duplicate notification (same UID and resourceVersion) is not decided twice", async () => {
    const pod = meshPodObject("dup");
    await post(apiServerSourceEvent("add", pod));
    const res = await post(apiServerSourceEvent("update", pod));
    assert.equal((res.body as { results: { outcome: string }[] }).results[0]?.outcome, "duplicate");
  });

  test("structured and batch content modes are accepted", async () => {
    const e = apiServerSourceEvent("add", meshPodObject("structured"));
    const structured = {
      specversion: "1.0",
      id: e.headers["ce-id"],
      source: e.headers["ce-source"],
      type: e.headers["ce-type"],
      subject: e.headers["ce-subject"],
      datacontenttype: "application/json",
      data: JSON.parse(e.body) as unknown,
    };
    const one = await request(app).post("/").set("content-type", "application/cloudevents+json").send(JSON.stringify(structured));
    assert.equal(one.status, 200, JSON.stringify(one.body));
    const batch = await request(app)
      .post("/")
      .set({ "content-type": "application/cloudevents-batch+json", ...REPRESENTATION })
      .send(
        JSON.stringify([
          { ...structured, id: "b1" },
          { ...structured, id: "b2", data: meshPodObject("batch-2") },
        ]),
      );
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    assert.equal((batch.body as { results: unknown[] }).results.length, 2);
  });

  test("a 2xx answer has no body unless asked for (Prefer: return=representation): the adapter can keep its connection", async () => {
    const e = apiServerSourceEvent("add", meshPodObject("minimal"));
    const minimal = await request(app).post("/").set(e.headers).send(e.body);
    assert.equal(minimal.status, 200);
    assert.equal(minimal.headers["content-length"], "0");
    assert.equal(minimal.text, "");
    assert.equal(minimal.headers["preference-applied"], undefined);
    const full = await post(apiServerSourceEvent("add", meshPodObject("minimal-2")));
    assert.equal(full.headers["preference-applied"], "return=representation");
    assert.deepEqual((full.body as { results: unknown[] }).results, [{ pod: "shop/minimal-2", outcome: "dry-run", reason: "needs-rules" }]);
    // A refusal says why either way (the SDK reads the body of a failure).
    const refused = await request(app).post("/").set("content-type", "application/json").send("{}");
    assert.equal(refused.status, 400);
    assert.equal((refused.body as { error: string }).error, "not a CloudEvent");
  });

  test("the Prefer header: return=representation among the preferences, any case, quoted or with parameters; nothing else", () => {
    for (const yes of ["return=representation", "RETURN=Representation", ' respond-async, return="representation" ; x=1', "wait=5,return=representation"])
      assert.equal(wantsRepresentation(yes), true, yes);
    assert.equal(wantsRepresentation(["handling=lenient", "return=representation"]), true);
    for (const no of [
      undefined,
      "",
      "return=minimal",
      "return",
      "representation",
      "return=representation2",
      "xreturn=representation",
      "return==representation",
      ";return=representation",
    ])
      assert.equal(wantsRepresentation(no), false, String(no));
    // Any header value: an answer, never an exception; only a header naming the preference asks for it.
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 })), (prefer) => {
        const asked = wantsRepresentation(prefer);
        assert.equal(typeof asked, "boolean");
        if (asked) assert.match([prefer].flat().join(",").toLowerCase(), /return\s*=\s*"?representation/);
      }),
      { numRuns: 2000 },
    );
  });

  const malformed: [string, () => request.Test, number][] = [
    ["no CloudEvent headers", () => request(app).post("/").set("content-type", "application/json").send("{}"), 400],
    [
      "a structured event without a type",
      () =>
        request(app)
          .post("/")
          .set("content-type", "application/cloudevents+json")
          .send(JSON.stringify({ specversion: "1.0", id: "1", source: "/s" })),
      400,
    ],
    [
      "unknown event type",
      () =>
        post({
          ...apiServerSourceEvent("add", meshPodObject("x")),
          headers: { ...apiServerSourceEvent("add", meshPodObject("x")).headers, "ce-type": "com.example.other" },
        }),
      400,
    ],
    [
      "not a pod",
      () => {
        const e = apiServerSourceEvent("add", meshPodObject("x"));
        return post({ ...e, body: JSON.stringify({ metadata: "nope" }) });
      },
      400,
    ],
    [
      "invalid JSON",
      () => {
        const e = apiServerSourceEvent("add", meshPodObject("x"));
        return post({ ...e, body: "{not json" });
      },
      400,
    ],
    [
      "a 2 MiB body",
      () => {
        const e = apiServerSourceEvent("add", meshPodObject("x"));
        return post({ ...e, body: "x".repeat(2 * 1024 * 1024) });
      },
      413,
    ],
    [
      "a Reference event without a pod reference",
      () => {
        const e = apiServerSourceEvent("add", meshPodObject("x"));
        return post({ headers: { ...e.headers, "ce-type": "dev.knative.apiserver.ref.add" }, body: JSON.stringify({ kind: "Service" }) });
      },
      400,
    ],
  ];
  for (const [what, send, status] of malformed) {
    test(`malformed: ${what} → ${status}, and the server keeps serving`, async () => {
      const stackTraceLimit = Error.stackTraceLimit;
      const res = await send();
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.equal((await request(app).get("/healthz")).status, 200);
      assert.equal(Error.stackTraceLimit, stackTraceLimit, "the parse's stack trace limit is given back");
    });
  }

  test("property: arbitrary bodies with ApiServerSource headers → 200 or 4xx, never 5xx", async () => {
    const headers = apiServerSourceEvent("add", meshPodObject("p")).headers;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 300 }),
          fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
        ),
        async (body) => {
          const res = await request(app).post("/").set(headers).send(body);
          assert.ok(res.status === 200 || (res.status >= 400 && res.status < 500), `status ${res.status}: ${JSON.stringify(res.body)}`);
        },
      ),
      { numRuns: 300 },
    );
  });

  test("metrics count events by type and outcome and decisions by reason", async () => {
    assert.equal((await request(app).get("/metrics")).status, 404, "metrics have a port of their own (lib/metrics-server.ts)");
    const text = await metrics.registry.metrics();
    assert.match(text, /podnet_function_events_total\{type="dev\.knative\.apiserver\.resource\.add",outcome="handled"\} \d+/);
    assert.match(text, /podnet_function_decisions_total\{action="skip",reason="already-initialized"\} 1/);
    assert.match(text, /podnet_function_decision_duration_seconds_bucket/);
  });
});

describe("decision function: capture warnings (Istio parity)", () => {
  test("a non-boolean proxy env flag still dispatches, and a CaptureConfigWarning Event names the variable", async () => {
    const base = meshPodObject("env-yes");
    const pod = { ...base, spec: { ...base.spec, containers: [{ name: "app" }, { name: "istio-proxy", env: [{ name: "INVALID_DROP", value: "yes" }] }] } };
    const warnings: { reason: string; message: string }[] = [];
    const dispatched: string[] = [];
    const enforcing = createFunctionApp({
      policy: () => parsePolicy("mode: enforce"),
      dispatcher: {
        send: (d) => {
          dispatched.push(d.pod.name);
          return Promise.resolve({ ok: true, status: 200, result: "applied" });
        },
      },
      cluster: {
        getPod: () => Promise.resolve(parsePod(pod)),
        getNamespace: () => Promise.resolve(undefined),
        listPods: unreachable("pod list"),
        recordPodWarning: (_pod, reason, message) => {
          warnings.push({ reason, message });
          return Promise.resolve();
        },
      },
      log: pino({ level: "silent" }),
      metrics: createFunctionMetrics({ defaultMetrics: false }),
    });
    const res = await request(enforcing).post("/").set(apiServerSourceEvent("add", pod).headers).send(apiServerSourceEvent("add", pod).body);
    assert.equal(res.status, 200);
    assert.deepEqual(dispatched, ["env-yes"]);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.reason, "CaptureConfigWarning");
    assert.match(warnings.map((w) => w.message).join(), /istio-proxy env INVALID_DROP: "yes" is not a boolean/);
  });
});

describe("decision function: pods that carry the waiter but get no rules", () => {
  const waiterInit = { name: "istio-validation", image: "ghcr.io/podnet/waiter:0.1.0", command: [WAITER_COMMAND] };
  const withWaiter = (name: string, namespace: string) => {
    const base = meshPodObject(name, { namespace });
    return { ...base, spec: { ...base.spec, initContainers: [waiterInit] } };
  };
  function appWith(policy: string) {
    const warnings: { pod: string; reason: string; message: string }[] = [];
    const sent: ReleaseDecision[] = [];
    const app = createFunctionApp({
      policy: () => parsePolicy(policy),
      // Only a release may be sent (a skip to mark): anything else fails the test.
      dispatcher: {
        send: (decision) => {
          if (decision.action !== "release") return unreachable("dispatcher")();
          sent.push(decision);
          return Promise.resolve({ ok: true, status: 200, result: "skipped" });
        },
      },
      cluster: {
        getPod: (namespace, name) => Promise.resolve(parsePod(withWaiter(name, namespace))),
        getNamespace: () => Promise.resolve(undefined),
        listPods: unreachable("pod list"),
        recordPodWarning: (pod, reason, message) => {
          warnings.push({ pod: pod.metadata.name ?? "", reason, message });
          return Promise.resolve();
        },
      },
      log: pino({ level: "silent" }),
      metrics: createFunctionMetrics({ defaultMetrics: false }),
    });
    const send = async (pod: ReturnType<typeof withWaiter>) => {
      const e = apiServerSourceEvent("update", pod);
      return request(app).post("/").set(e.headers).send(e.body);
    };
    return { send, warnings, sent };
  }

  test("skipped by the policy (excluded namespace): its node-runner is asked to mark it skipped, so its waiter lets it start; one NetworkInitSkipped Event says so", async () => {
    const { send, warnings, sent } = appWith("mode: enforce");
    const pod = withWaiter("stranded", "kube-system");
    for (let i = 0; i < 2; i++) assert.equal((await send({ ...pod, metadata: { ...pod.metadata, resourceVersion: String(i) } })).status, 200);
    for (let i = 0; i < 100 && sent.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(
      [...new Set(sent.map((d) => `${d.node} ${d.pod.name} ${d.skip}`))],
      ["node-a stranded the policy skips this pod (namespace-excluded: kube-system)"],
    );
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    assert.equal(warnings[0]?.reason, "NetworkInitSkipped");
    assert.match(warnings.map((w) => w.message).join(), /namespace-excluded: kube-system.*released, so the pod starts without traffic interception/);
  });

  test("dry-run: the pod is told no rules will come", async () => {
    const { send, warnings } = appWith("mode: dry-run");
    assert.equal((await send(withWaiter("dry", "shop"))).status, 200);
    assert.match(warnings.map((w) => `${w.reason} ${w.message}`).join(), /NetworkInitSkipped the policy is in dry-run mode/);
    // Excluded in dry-run: told it will time out (dry-run acts on no pod), nothing sent.
    const excluded = appWith("mode: dry-run");
    assert.equal((await excluded.send(withWaiter("dry-excluded", "kube-system"))).status, 200);
    assert.match(excluded.warnings.map((w) => w.message).join(), /namespace-excluded: kube-system.*dry-run mode.*will time out/);
    assert.deepEqual(excluded.sent, []);
  });

  test("a pod without the waiter that the policy skips is left alone, silently", async () => {
    // `app` (above) fails the test if it records any Event.
    const e = apiServerSourceEvent("update", meshPodObject("plain", { namespace: "kube-system" }));
    const res = await post(e);
    assert.deepEqual(
      (res.body as { results: { reason: string }[] }).results.map((r) => r.reason),
      ["namespace-excluded"],
    );
  });
});

describe("decision function: senders refused", () => {
  test("a source that sends no token (Knative's OIDC off, or no sink audience) is answered 401 each time, and logged once, naming both settings", async () => {
    const lines: { reason?: string; detail?: string; msg?: string }[] = [];
    const app = createFunctionApp({
      policy: () => dryRun,
      dispatcher: { send: unreachable("dispatcher") },
      cluster: {
        getPod: unreachable("pod"),
        getNamespace: unreachable("namespace"),
        listPods: unreachable("pod list"),
        recordPodWarning: unreachable("events"),
      },
      log: pino({ level: "warn" }, { write: (line: string) => lines.push(JSON.parse(line) as (typeof lines)[number]) }),
      metrics: createFunctionMetrics({ defaultMetrics: false }),
      auth: new SenderAuthenticator({ audience: "aud", allowed: new Set(), review: unreachable("token review") }),
    });
    const event = apiServerSourceEvent("add", meshPodObject("web-1"));
    for (let i = 0; i < 5; i++) assert.equal((await request(app).post("/").set(event.headers).send(event.body)).status, 401);
    const refusals = lines.filter((l) => l.msg === "refused: sender not authenticated");
    assert.equal(refusals.length, 1, JSON.stringify(lines));
    assert.equal(refusals[0]?.reason, "missing-token");
    assert.match(refusals[0].detail ?? "", /authentication-oidc .*config-features.*sink\.audience/);
  });
});
