import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MARK, STATUS_INITIALIZED, STATUS_REFUSED, STATUS_SKIPPED } from "../contract/mark.ts";
import { formatStatusTable, podStatusRows } from "./status.ts";

// Pure rows and table; the real command against a cluster's pods: test/node/e2e.test.ts.
const pod = (name: string, annotations: Record<string, string>, waiter?: object) => ({
  metadata: { namespace: "shop", name, uid: `uid-${name}`, annotations },
  spec: { nodeName: "pnc-node-1" },
  status: waiter === undefined ? {} : { initContainerStatuses: [{ name: "istio-validation", ...waiter }] },
});

describe("pnc status: rows", () => {
  test("each pod's mark, waiter and detail: the rules, the refusal's reason, or the last Warning the project recorded", () => {
    const rows = podStatusRows(
      [
        pod(
          "web",
          { [MARK.status]: STATUS_INITIALIZED, [MARK.rules]: "4647c2457299da60", [MARK.netns]: "4026532246" },
          { state: { terminated: { exitCode: 0 } } },
        ),
        pod(
          "bad",
          { [MARK.status]: STATUS_REFUSED, [MARK.reason]: "invalid capture configuration: x" },
          { restartCount: 2, state: { waiting: { reason: "CrashLoopBackOff" } } },
        ),
        pod("lost", {}, { state: { running: {} } }),
        pod("plain", { [MARK.status]: "something-else" }),
        pod(
          "excluded",
          { [MARK.status]: STATUS_SKIPPED, [MARK.reason]: "the policy skips this pod (namespace-excluded: shop)" },
          { state: { terminated: { exitCode: 0 } } },
        ),
      ],
      [
        { involvedObject: { uid: "uid-lost" }, reason: "NetworkInitSkipped", message: "older", lastTimestamp: "2026-12-06T10:00:00Z" },
        { involvedObject: { uid: "uid-lost" }, reason: "NetworkInitSkipped", message: "the policy skips this pod", lastTimestamp: "2026-12-06T11:00:00Z" },
        { involvedObject: { uid: "uid-web" }, reason: "Scheduled", message: "not ours", lastTimestamp: "2026-12-06T12:00:00Z" },
      ],
    );
    assert.deepEqual(
      rows.map((r) => [r.name, r.mark, r.waiter, r.detail]),
      [
        ["bad", "refused", "waiting (CrashLoopBackOff) (2 restarts)", "invalid capture configuration: x"],
        ["excluded", "skipped", "exited 0", "the policy skips this pod (namespace-excluded: shop)"],
        ["lost", "none", "running", "NetworkInitSkipped: the policy skips this pod"],
        ["plain", "none", "-", ""],
        ["web", "initialized", "exited 0", "rules 4647c2457299da60 in netns 4026532246"],
      ],
    );
    const table = formatStatusTable(rows).split("\n");
    assert.match(table[0] ?? "", /^NAMESPACE\s+NAME\s+NODE\s+MARK\s+WAITER\s+DETAIL$/);
    assert.equal(table.length, 6);
    assert.equal(new Set(table.map((l) => (l.indexOf("pnc-node-1") < 0 ? l.indexOf("NODE") : l.indexOf("pnc-node-1")))).size, 1, "aligned columns");
  });

  test("a long detail is cut to one line of the table", () => {
    const [row] = podStatusRows([pod("x", { [MARK.status]: STATUS_REFUSED, [MARK.reason]: "r".repeat(1024) })], []);
    assert.ok(row !== undefined);
    const line = formatStatusTable([row]).split("\n")[1] ?? "";
    assert.ok(line.endsWith("…") && line.length < 200, line);
  });
});
