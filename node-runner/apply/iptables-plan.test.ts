// The iptables planner as data in, data out: no namespace, no commands.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../../contract/capture-config.ts";
import { ownedRules, parseSave, replaceTransaction, type SaveState } from "../rules/iptables-text.ts";
import { renderIptables } from "../rules/iptables.ts";
import type { Family } from "../rules/istio.ts";
import { netSetupSteps } from "../rules/routes.ts";
import { completeIptablesApply, familiesToRead, planIptablesApply, planIptablesRemove, type IptablesApplyInput } from "./iptables-plan.ts";
import type { IptablesRecord } from "./records.ts";

const config = (overrides: object = {}) => parseCaptureConfig({ ...DEFAULT_CAPTURE_CONFIG, ...overrides });
const EMPTY = parseSave("");

/** What a save prints once a restore input is in a fresh namespace, approximately: its rule lines as they were written. */
function savedAfter(restore: string): SaveState {
  return parseSave(restore.replace(/^-I (\S+) \d+ /gm, "-A $1 "));
}

function input(overrides: Partial<IptablesApplyInput> & { capture?: ReturnType<typeof config> }): IptablesApplyInput {
  const capture = overrides.capture ?? config();
  return {
    variant: "iptables-nft",
    podUid: "uid-1",
    netnsInode: "4026532000",
    record: undefined,
    desired: renderIptables(capture),
    steps: netSetupSteps(capture),
    before: new Map<Family, SaveState>([[4, EMPTY]]),
    savedForm: () => undefined,
    ...overrides,
  };
}

describe("iptables planner", () => {
  test("a fresh namespace, Istio's default capture: one IPv4 transaction, no intent (ownership is evident), a save after it", () => {
    const i = input({});
    const plan = planIptablesApply(i);
    assert.equal(plan.kind, "apply");
    assert.equal(plan.intent, undefined);
    assert.deepEqual(
      plan.transactions.map((t) => [t.family, t.input, t.savedForm]),
      [[4, replaceTransaction({}, i.desired.v4.rules), undefined]],
    );
    const after = savedAfter(i.desired.v4.restore);
    const { record, learned } = completeIptablesApply(i, plan, new Map([[4, after]]));
    assert.deepEqual(record.owned["4"], ownedRules(after, record.builtin["4"]));
    assert.equal(record.digest, plan.digest);
    assert.equal(learned.length, 1);
  });

  test("the same rules recorded and found again: unchanged; drift: applied again, without the learned form", () => {
    const i = input({});
    const plan = planIptablesApply(i);
    assert.equal(plan.kind, "apply");
    const after = savedAfter(i.desired.v4.restore);
    const { record } = completeIptablesApply(i, plan, new Map([[4, after]]));
    const again = planIptablesApply(input({ record, before: new Map([[4, after]]), savedForm: () => record.owned["4"] }));
    assert.deepEqual(again, { kind: "unchanged", digest: plan.digest });

    const drifted = parseSave(i.desired.v4.restore.replace(/^-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n/m, ""));
    const repair = planIptablesApply(input({ record, before: new Map([[4, drifted]]), savedForm: () => record.owned["4"] }));
    assert.equal(repair.kind, "apply");
    assert.deepEqual(repair.drifted, [4]);
    assert.equal(repair.transactions[0]?.savedForm, undefined, "a form that did not hold is not trusted");
  });

  test("TPROXY with link steps: the intent comes first and records the built-in lines as they were", () => {
    const capture = config({ inboundInterceptionMode: "TPROXY" });
    const foreign = parseSave("*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i eth7 -j RETURN\nCOMMIT\n");
    const plan = planIptablesApply(input({ capture, before: new Map([[4, foreign]]) }));
    assert.equal(plan.kind, "apply");
    const intent = plan.intent;
    assert.ok(intent?.pending !== undefined);
    assert.deepEqual(intent.pending["4"], { mangle: { PREROUTING: ["-i eth7 -j RETURN"] } });
    assert.equal(intent.digest, "");
  });

  test("IPv6 turned off: the IPv6 rules the record owns are read and taken out", () => {
    const record: IptablesRecord = {
      podUid: "uid-1",
      netnsInode: "4026532000",
      digest: "x",
      variant: "iptables-nft",
      builtin: {},
      owned: { "4": {}, "6": { nat: { ISTIO_OUTPUT: ["-j RETURN"] } } },
      netSetup: [],
    };
    const desired = renderIptables(config());
    assert.deepEqual(familiesToRead(desired, record), [4, 6]);
    assert.deepEqual(familiesToRead(desired, undefined), [4]);
    const v6 = parseSave("*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n");
    const plan = planIptablesApply(
      input({
        record,
        before: new Map([
          [4, EMPTY],
          [6, v6],
        ]),
      }),
    );
    assert.equal(plan.kind, "apply");
    const six = plan.transactions.find((t) => t.family === 6);
    assert.ok(six !== undefined);
    assert.equal(six.rules, null);
    assert.match(six.input, /-X ISTIO_OUTPUT/);
  });

  test("remove: only families holding what the runner owns get a transaction", () => {
    const v4 = savedAfter(renderIptables(config()).v4.restore);
    const transactions = planIptablesRemove(
      undefined,
      new Map([
        [4, v4],
        [6, EMPTY],
      ]),
    );
    assert.deepEqual(
      transactions.map((t) => t.family),
      [4],
    );
    assert.match(transactions[0]?.input ?? "", /-X ISTIO_OUTPUT/);
  });
});
