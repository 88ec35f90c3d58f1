// One pod's pipeline with its edges replaced (an in-memory pod API): a namespace holding rules
// changed only after the identity check, a new pod's checked by its mark and emptied again when
// that is refused, the bound on Events waiting, and Events held while pods are being programmed.
import assert from "node:assert/strict";
import { test } from "node:test";
import { pino } from "pino";
import { DEFAULT_CAPTURE_CONFIG } from "../contract/capture-config.ts";
import { createMetrics, type NodeRunnerMetrics } from "./metrics.ts";
import type { PodIdentity } from "./kube.ts";
import { ApiError } from "../lib/kube-http.ts";
import type { NetnsResolution } from "./netns.ts";
import { createPodProgrammer, EVENTS_AT_ONCE, MAX_EVENTS_WAITING, Refusal, type PodProgrammer } from "./program.ts";

const pod = { namespace: "shop", name: "web", uid: "uid-1", ips: ["10.0.0.2"] };
const never = <T>(): Promise<T> => new Promise<T>(() => undefined);

/** Requests whose capture is invalid: each is refused (422) and records a NetworkInitFailed Event. */
function refusingProgrammer(
  recordEvent: () => Promise<void>,
  identify: () => Promise<PodIdentity> = () => Promise.resolve({ kind: "found", terminating: false }),
): { metrics: NodeRunnerMetrics; programmer: PodProgrammer; refuse: (count: number) => Promise<void> } {
  const metrics = createMetrics({ defaultMetrics: false });
  const programmer = createPodProgrammer({
    nodeName: "node-a",
    // No quiet time: an Event goes as soon as no pod is being programmed.
    eventTiming: { quietMs: 0, maxDelayMs: 60_000 },
    pods: {
      identify,
      markInitialized: () => assert.fail("nothing is marked"),
      markRefused: () => Promise.resolve(),
      markSkipped: () => assert.fail("nothing is skipped"),
      recordEvent,
    },
    resolveNetns: () => assert.fail("an invalid capture never reaches the netns"),
    applierFor: () => assert.fail("nor an applier"),
    metrics,
  });
  const refuse = async (count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      await assert.rejects(
        programmer.apply(pod, { excludeInboundPorts: "http" }, pino({ level: "silent" })),
        (err: unknown) => err instanceof Refusal && err.status === 422,
      );
    }
  };
  return { metrics, programmer, refuse };
}

test("a stalled API server: EVENTS_AT_ONCE Events sent, MAX_EVENTS_WAITING wait, the rest are dropped and counted; every request still gets its refusal", async () => {
  let sent = 0;
  const { metrics, refuse } = refusingProgrammer(() => {
    sent++;
    return never();
  });
  const extra = 6;
  await refuse(EVENTS_AT_ONCE + MAX_EVENTS_WAITING + extra);
  assert.equal(sent, EVENTS_AT_ONCE);
  assert.equal((await metrics.eventsPending.get()).values[0]?.value, EVENTS_AT_ONCE + MAX_EVENTS_WAITING);
  const dropped = (await metrics.eventFailures.get()).values.find((v) => v.labels.reason === "NetworkInitFailed-dropped")?.value;
  assert.equal(dropped, extra);
});

test("Events wait their turn and are all sent, EVENTS_AT_ONCE at a time", async () => {
  let sending = 0;
  let most = 0;
  let sent = 0;
  const { metrics, refuse } = refusingProgrammer(async () => {
    most = Math.max(most, ++sending);
    await new Promise((r) => setTimeout(r, 2));
    sending--;
    sent++;
  });
  await refuse(20);
  while (sent < 20) await new Promise((r) => setTimeout(r, 5));
  assert.equal(most, EVENTS_AT_ONCE);
  assert.equal((await metrics.eventsPending.get()).values[0]?.value, 0);
});

test("an Event waits while another pod is being programmed, and is sent once nothing is", async () => {
  let sent = 0;
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  let reads = 0;
  const { programmer, refuse } = refusingProgrammer(
    () => {
      sent++;
      return Promise.resolve();
    },
    async () => {
      // The first request's identity check hangs until released: that pod is being programmed.
      if (reads++ === 0) await held;
      return { kind: "found", terminating: false } as const;
    },
  );
  const first = assert.rejects(
    programmer.apply(pod, { excludeInboundPorts: "http" }, pino({ level: "silent" })),
    (err: unknown) => err instanceof Refusal && err.status === 422,
  );
  await refuse(3);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(sent, 0, "held while the first pod's work runs");
  assert.equal(programmer.pendingEvents, 3);
  release();
  await first;
  const sentNow = (): number => sent;
  for (let i = 0; i < 400 && sentNow() < 4; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(sentNow(), 4);
  assert.equal(programmer.pendingEvents, 0);
});

test("flushEvents sends the waiting Events while work still runs (shutdown)", async () => {
  let sent = 0;
  let reads = 0;
  const { programmer, refuse } = refusingProgrammer(
    () => {
      sent++;
      return Promise.resolve();
    },
    () => (reads++ === 0 ? never() : Promise.resolve({ kind: "found", terminating: false } as const)),
  );
  void programmer.apply(pod, {}, pino({ level: "silent" })); // never ends
  await refuse(3);
  assert.equal(sent, 0);
  await programmer.flushEvents();
  assert.equal(sent, 3);
});

test("a namespace left without its process during the apply: 503 netns-not-found, the pod is not marked", async () => {
  const metrics = createMetrics({ defaultMetrics: false });
  const netns = { fd: -1, inode: "4026532000", legacyTables: () => undefined, close: () => undefined };
  const programmer = createPodProgrammer({
    nodeName: "node-a",
    eventTiming: { quietMs: 0, maxDelayMs: 60_000 },
    pods: {
      identify: () => Promise.resolve({ kind: "found", terminating: false }),
      markInitialized: () => assert.fail("a namespace nobody lives in is not marked"),
      markRefused: () => assert.fail("nor refused"),
      markSkipped: () => assert.fail("nor skipped"),
      recordEvent: () => Promise.resolve(),
    },
    resolveNetns: () => Promise.resolve({ found: true, netns: { inode: netns.inode, path: "/proc/1/ns/net", pid: 1, processes: 1, hostInode: "1" } }),
    openNetns: () => netns,
    stillInhabited: () => false,
    applierFor: () =>
      Promise.resolve({
        untouched: false,
        digest: () => "d",
        apply: () => Promise.resolve({ result: "applied", digest: "d" }),
        remove: () => Promise.resolve("removed"),
      }),
    metrics,
  });
  await assert.rejects(
    programmer.apply(pod, DEFAULT_CAPTURE_CONFIG, pino({ level: "silent" })),
    (err: unknown) => err instanceof Refusal && err.status === 503 && err.reason === "netns-not-found",
  );
});

/**
 * A programmer whose identity check answers when the test says, and whose mark is refused with
 * `markRefusal` (an API error) if given; what each edge was asked, in order.
 */
function orderedProgrammer(options: { found: boolean; chooseFails?: boolean; untouched?: boolean; markRefusal?: ApiError }) {
  const calls: string[] = [];
  let answer!: (identity: PodIdentity) => void;
  const identity = new Promise<PodIdentity>((resolve) => (answer = resolve));
  const netns = { fd: -1, inode: "4026532000", legacyTables: () => undefined, close: () => calls.push("close") };
  const programmer = createPodProgrammer({
    nodeName: "node-a",
    eventTiming: { quietMs: 0, maxDelayMs: 60_000 },
    pods: {
      identify: () => {
        calls.push("identify");
        return identity;
      },
      markInitialized: () => {
        calls.push("mark");
        return options.markRefusal === undefined ? Promise.resolve() : Promise.reject(options.markRefusal);
      },
      markRefused: () => assert.fail("nothing is refused"),
      markSkipped: () => assert.fail("nor skipped"),
      recordEvent: () => Promise.resolve(),
    },
    resolveNetns: () => {
      calls.push("resolve");
      const resolution: NetnsResolution = options.found
        ? { found: true, netns: { inode: netns.inode, path: "/proc/1/ns/net", pid: 1, processes: 1, hostInode: "1" } }
        : { found: false, reason: "no-process", detail: "no process of the pod" };
      return Promise.resolve(resolution);
    },
    openNetns: () => netns,
    stillInhabited: () => true,
    applierFor: () => {
      calls.push("choose");
      if (options.chooseFails === true) return Promise.reject(new Error("the helper failed"));
      return Promise.resolve({
        untouched: options.untouched ?? false,
        // The rules digest of a capture: its excluded inbound ports, enough to tell two apart.
        digest: (config) => `d${config.inboundPortsExclude.join(",")}`,
        apply: (config) => {
          calls.push("apply");
          return Promise.resolve({ result: "applied", digest: `d${config.inboundPortsExclude.join(",")}` });
        },
        remove: () => {
          calls.push("remove");
          return Promise.resolve("removed" as const);
        },
      });
    },
    metrics: createMetrics({ defaultMetrics: false }),
  });
  return { programmer, calls, answer };
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 10));

test("a namespace that holds no rules (a new pod's) is programmed and marked in one API call: the mark's patch is the identity check", async () => {
  const { programmer, calls } = orderedProgrammer({ found: true, untouched: true });
  assert.equal((await programmer.apply(pod, DEFAULT_CAPTURE_CONFIG, pino({ level: "silent" }))).result, "applied");
  assert.deepEqual(calls, ["resolve", "choose", "apply", "mark", "close"]);
});

for (const [name, refusal, reason] of [
  ["gone", new ApiError(404, 'pods "web" not found'), "pod-not-found"],
  ["replaced (another UID)", new ApiError(422, "Precondition failed: UID in precondition", ["metadata.uid"]), "uid-mismatch"],
  ["not bound to this node", new ApiError(403, "denied by the admission policy"), "not-on-this-node"],
] as const) {
  test(`a new pod's namespace programmed, the mark refused (the pod ${name}): its rules are taken out again, 409 ${reason}`, async () => {
    const { programmer, calls } = orderedProgrammer({ found: true, untouched: true, markRefusal: refusal });
    await assert.rejects(
      programmer.apply(pod, DEFAULT_CAPTURE_CONFIG, pino({ level: "silent" })),
      (err: unknown) => err instanceof Refusal && err.status === 409 && err.reason === reason,
    );
    assert.deepEqual(calls, ["resolve", "choose", "apply", "mark", "remove", "close"]);
  });
}

test("a namespace that holds rules is changed only once the identity check has answered", async () => {
  const { programmer, calls, answer } = orderedProgrammer({ found: true });
  const applied = programmer.apply(pod, DEFAULT_CAPTURE_CONFIG, pino({ level: "silent" }));
  await settle();
  assert.deepEqual(calls, ["resolve", "choose", "identify"], "nothing applied before the API server answered");
  answer({ kind: "found", terminating: false });
  assert.equal((await applied).result, "applied");
  assert.deepEqual(calls, ["resolve", "choose", "identify", "apply", "mark", "close"]);
});

for (const [name, options] of [
  ["its namespace holding rules", { found: true }],
  ["no namespace found", { found: false }],
  ["the engine's choice failing", { found: true, chooseFails: true }],
] as const) {
  test(`a pod the API server does not have, ${name}: 409 pod-not-found, nothing applied or marked`, async () => {
    const { programmer, calls, answer } = orderedProgrammer(options);
    const applied = programmer.apply(pod, DEFAULT_CAPTURE_CONFIG, pino({ level: "silent" }));
    await settle();
    answer({ kind: "not-found" });
    await assert.rejects(applied, (err: unknown) => err instanceof Refusal && err.status === 409 && err.reason === "pod-not-found");
    assert.ok(!calls.includes("apply") && !calls.includes("mark"), calls.join(", "));
  });
}

test("a pod initialized in this namespace keeps its rules: other rules are refused 409 before anything changes; the same rules, or another namespace, pass", async () => {
  const initialized = (netns: string, rules: string): PodIdentity => ({
    kind: "found",
    terminating: false,
    marked: "initialized",
    initializedWith: { netns, rules },
  });
  const other = { ...DEFAULT_CAPTURE_CONFIG, inboundPortsExclude: "15020,9090" };
  const marked = `d${DEFAULT_CAPTURE_CONFIG.inboundPortsExclude}`;
  for (const [name, identity, capture, expected] of [
    ["other rules, this namespace", initialized("4026532000", marked), other, "initialized-with-other-rules"],
    ["the same rules, this namespace", initialized("4026532000", marked), DEFAULT_CAPTURE_CONFIG, "applied"],
    ["other rules, another namespace (a re-created sandbox)", initialized("4026539999", marked), other, "applied"],
    ["other rules, a pod marked refused", { kind: "found", terminating: false, marked: "refused" } as const, other, "applied"],
  ] as const) {
    const { programmer, calls, answer } = orderedProgrammer({ found: true });
    const applied = programmer.apply(pod, capture, pino({ level: "silent" }));
    await settle();
    answer(identity);
    if (expected === "applied") assert.equal((await applied).result, "applied", name);
    else {
      await assert.rejects(
        applied,
        (err: unknown) => err instanceof Refusal && err.status === 409 && err.reason === expected && err.message.includes(marked),
        name,
      );
      assert.deepEqual(calls, ["resolve", "choose", "identify", "close"], `${name}: nothing applied or marked`);
    }
  }
});

/** A programmer over a pod found with `marked` (or no mark); what it marks refused or skipped is recorded, anything else fails. */
function markingProgrammer(marked: string | undefined) {
  const marks: { refused: string[]; skipped: string[] } = { refused: [], skipped: [] };
  const programmer = createPodProgrammer({
    nodeName: "node-a",
    eventTiming: { quietMs: 0, maxDelayMs: 60_000 },
    pods: {
      identify: () => Promise.resolve({ kind: "found", terminating: false, ...(marked === undefined ? {} : { marked }) }),
      markInitialized: () => assert.fail("nothing is initialized"),
      markRefused: (_pod, reason) => {
        marks.refused.push(reason);
        return Promise.resolve();
      },
      markSkipped: (_pod, reason) => {
        marks.skipped.push(reason);
        return Promise.resolve();
      },
      recordEvent: () => Promise.resolve(),
    },
    resolveNetns: () => assert.fail("never reaches the netns"),
    applierFor: () => assert.fail("nor an applier"),
    metrics: createMetrics({ defaultMetrics: false }),
  });
  return { programmer, marks };
}

test("an invalid capture marks the pod refused with the reason, unless it is initialized (what runs stays); the refusal is answered either way", async () => {
  for (const marked of [undefined, "refused", "initialized"]) {
    const { programmer, marks } = markingProgrammer(marked);
    await assert.rejects(
      programmer.apply(pod, { excludeInboundPorts: "http" }, pino({ level: "silent" })),
      (err: unknown) => err instanceof Refusal && err.status === 422,
    );
    if (marked === "initialized") assert.deepEqual(marks.refused, [], "an initialized pod keeps its mark");
    else assert.match(marks.refused[0] ?? "", /^invalid capture configuration: /);
    const asked = await programmer.refuse(pod, "invalid capture configuration: x", pino({ level: "silent" }));
    assert.equal(asked.result, marked === "initialized" ? "kept-initialized" : "refused");
    await programmer.flushEvents();
  }
});

test("a skip marks the pod skipped with the policy's reason, unless it is initialized (what runs stays); nothing touches its netns", async () => {
  for (const marked of [undefined, "skipped", "initialized"]) {
    const { programmer, marks } = markingProgrammer(marked);
    const answered = await programmer.skip(pod, "the policy skips this pod (namespace-excluded: knative-serving)", pino({ level: "silent" }));
    assert.equal(answered.result, marked === "initialized" ? "kept-initialized" : "skipped");
    assert.deepEqual(marks, { refused: [], skipped: marked === "initialized" ? [] : ["the policy skips this pod (namespace-excluded: knative-serving)"] });
    await programmer.flushEvents();
  }
});
