// One pod's pipeline with its edges replaced (an in-memory pod API): refusals before any netns
// work, and the bound on Events in flight.
import assert from "node:assert/strict";
import { test } from "node:test";
import { pino } from "pino";
import { createMetrics } from "./metrics.ts";
import { createPodProgrammer, MAX_EVENTS_IN_FLIGHT, Refusal } from "./program.ts";

const pod = { namespace: "shop", name: "web", uid: "uid-1", ips: ["10.0.0.2"] };
const never = <T>(): Promise<T> => new Promise<T>(() => undefined);

test("a stalled API server holds at most MAX_EVENTS_IN_FLIGHT Events; the rest are dropped and counted; every request still gets its refusal", async () => {
  const metrics = createMetrics({ defaultMetrics: false });
  let sent = 0;
  const programmer = createPodProgrammer({
    nodeName: "node-a",
    pods: {
      getPod: () => Promise.resolve({ uid: "uid-1", nodeName: "node-a", hostNetwork: false, terminating: false }),
      markInitialized: () => assert.fail("nothing is marked"),
      clearMark: () => assert.fail("nothing is cleared"),
      recordEvent: () => {
        sent++;
        return never();
      },
    },
    resolveNetns: () => assert.fail("an invalid capture never reaches the netns"),
    applierFor: () => assert.fail("nor an applier"),
    metrics,
  });
  const extra = 6;
  for (let i = 0; i < MAX_EVENTS_IN_FLIGHT + extra; i++) {
    await assert.rejects(programmer.apply(pod, { excludeInboundPorts: "http" }, pino({ level: "silent" })), (err: unknown) => err instanceof Refusal && err.status === 422);
  }
  assert.equal(sent, MAX_EVENTS_IN_FLIGHT);
  const dropped = (await metrics.eventFailures.get()).values.find((v) => v.labels.reason === "NetworkInitFailed-dropped")?.value;
  assert.equal(dropped, extra);
});
