// One pod's pipeline with its edges replaced (an in-memory pod API): refusals before any netns
// work, and the bound on Events waiting.
import assert from "node:assert/strict";
import { test } from "node:test";
import { pino } from "pino";
import { createMetrics, type NodeRunnerMetrics } from "./metrics.ts";
import { createPodProgrammer, EVENTS_AT_ONCE, MAX_EVENTS_WAITING, Refusal } from "./program.ts";

const pod = { namespace: "shop", name: "web", uid: "uid-1", ips: ["10.0.0.2"] };
const never = <T>(): Promise<T> => new Promise<T>(() => undefined);

/** Requests whose capture is invalid: each is refused (422) and records a NetworkInitFailed Event. */
function refusingProgrammer(recordEvent: () => Promise<void>): { metrics: NodeRunnerMetrics; refuse: (count: number) => Promise<void> } {
  const metrics = createMetrics({ defaultMetrics: false });
  const programmer = createPodProgrammer({
    nodeName: "node-a",
    pods: {
      getPod: () => Promise.resolve({ uid: "uid-1", nodeName: "node-a", hostNetwork: false, terminating: false }),
      markInitialized: () => assert.fail("nothing is marked"),
      clearMark: () => assert.fail("nothing is cleared"),
      recordEvent,
    },
    resolveNetns: () => assert.fail("an invalid capture never reaches the netns"),
    applierFor: () => assert.fail("nor an applier"),
    metrics,
  });
  const refuse = async (count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      await assert.rejects(programmer.apply(pod, { excludeInboundPorts: "http" }, pino({ level: "silent" })), (err: unknown) => err instanceof Refusal && err.status === 422);
    }
  };
  return { metrics, refuse };
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
