import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { CLEAR_LEGACY_MARK, LEGACY_MARK, MARK, readMark } from "./mark.ts";

test("readMark: the current names, else the legacy ones (an older node-runner's), never a mix", () => {
  assert.deepEqual(readMark({}), {});
  assert.deepEqual(readMark({ [MARK.status]: "initialized", [MARK.netns]: "1", [MARK.rules]: "r" }), { status: "initialized", netns: "1", rules: "r" });
  assert.deepEqual(readMark({ [LEGACY_MARK.status]: "refused", [LEGACY_MARK.reason]: "bad" }), { status: "refused", reason: "bad" });
  assert.deepEqual(
    readMark({ [MARK.status]: "refused", [MARK.reason]: "new", [LEGACY_MARK.status]: "initialized", [LEGACY_MARK.netns]: "9" }),
    { status: "refused", reason: "new" },
    "the current mark wins, and takes nothing from the legacy one",
  );
  assert.deepEqual(readMark({ [LEGACY_MARK.netns]: "9" }), {}, "no status under either name: no mark");
});

test("readMark: any annotations give a mark made only of their own values (property)", () => {
  const keys = fc.constantFrom(...Object.values(MARK), ...Object.values(LEGACY_MARK), "other/x");
  fc.assert(
    fc.property(fc.dictionary(keys, fc.string({ maxLength: 20 })), (annotations) => {
      const mark = readMark(annotations);
      for (const value of Object.values(mark)) assert.ok(Object.values(annotations).includes(value));
      if (annotations[MARK.status] !== undefined) assert.equal(mark.status, annotations[MARK.status]);
    }),
  );
});

test("the project's annotations are outside Istio's domain; the legacy ones are cleared by every mark", () => {
  for (const key of Object.values(MARK)) assert.doesNotMatch(key, /istio\.io\//);
  assert.deepEqual(Object.keys(CLEAR_LEGACY_MARK).sort(), Object.values(LEGACY_MARK).sort());
});
