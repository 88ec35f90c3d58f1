import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { parsePolicy, PolicyError } from "../functions/policy.ts";
import { switchPolicyMode } from "./fail-open.ts";

// Pure; the command on a live Knative install, its policy reloaded by the function: test/node/knative.test.ts.
test("the mode is switched in place: comments and every other field kept, the result loads; already so: nothing to write", () => {
  const text = "# ours\nmode: dry-run # for now\nrevision: abc\nnamespaces:\n  exclude: [kube-system]\n";
  const on = switchPolicyMode(text, "fail-open");
  assert.equal(on.from, "dry-run");
  assert.equal(on.text, "# ours\nmode: fail-open # for now\nrevision: abc\nnamespaces:\n  exclude: [kube-system]\n");
  assert.equal(parsePolicy(on.text).document.mode, "fail-open");
  assert.deepEqual(switchPolicyMode(on.text, "fail-open"), { text: undefined, from: "fail-open", to: "fail-open" });
  // An empty document is the default policy (enforce); the mode is added.
  assert.equal(switchPolicyMode("", "fail-open").text, "mode: fail-open\n");
  assert.equal(switchPolicyMode("", "enforce").text, undefined);
});

test("a policy the function would not load is not switched (it says why)", () => {
  for (const text of ["mode: sometimes\n", "- a list\n", "namespaces: {include: 3}\n", "{{{"]) {
    assert.throws(() => switchPolicyMode(text, "fail-open"), PolicyError, text);
  }
});

test("hostile documents: either a PolicyError or a document that loads with the mode asked for", () => {
  const fragment = fc.oneof(
    fc.string(),
    fc.constantFrom("mode: enforce\n", "revision: x\n", "mode: [\n", "&a [*a]\n", "# c\n", "namespaces:\n  include: [a]\n"),
  );
  fc.assert(
    fc.property(fc.array(fragment, { maxLength: 4 }), fc.constantFrom("enforce" as const, "dry-run" as const, "fail-open" as const), (parts, to) => {
      let result;
      try {
        result = switchPolicyMode(parts.join(""), to);
      } catch (err) {
        assert.ok(err instanceof PolicyError, String(err));
        return;
      }
      assert.equal(parsePolicy(result.text ?? parts.join("")).document.mode, to);
    }),
    { numRuns: 500 },
  );
});
