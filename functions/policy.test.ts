import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { matchesSelector, parsePolicy, PolicyError } from "./policy.ts";

describe("policy documents", () => {
  test("empty document: Istio defaults, enforce, kube-system and istio-system excluded", () => {
    const p = parsePolicy("");
    assert.equal(p.document.mode, "enforce");
    assert.deepEqual(p.document.namespaces.exclude, ["kube-system", "istio-system"]);
    assert.match(p.id, /^sha256:[0-9a-f]{12}$/);
  });
  test("the controller's namespace is always excluded; the digest follows content", () => {
    const a = parsePolicy("mode: dry-run", "podnet-system");
    assert.ok(a.document.namespaces.exclude.includes("podnet-system"));
    assert.notEqual(a.id, parsePolicy("mode: enforce", "podnet-system").id);
    assert.equal(a.id, parsePolicy("mode:   dry-run\n", "podnet-system").id);
    assert.match(parsePolicy("revision: r42").id, /^r42@sha256:/);
  });
  const invalid: [string, RegExp][] = [
    ["mode: sometimes", /mode/],
    ["unknown: 1", /Unrecognized key|unknown/],
    ["capture: { defaults: { excludeInterfaces: 'eth0 -j ACCEPT' } }", /capture\.defaults: capture field excludeInterfaces: "eth0 -j ACCEPT" is invalid/],
    ["capture: { namespaces: { shop: { proxyPort: '0' } } }", /capture\.namespaces\.shop/],
    ["capture: { defaults: { nope: 1 } }", /nope/],
    ["podSelector: { matchExpressions: [ { key: a, operator: Near } ] }", /operator/],
    ["[1, 2", /not valid YAML/],
    ["redispatchWaitingAfterSeconds: 1", /redispatchWaitingAfterSeconds/],
  ];
  for (const [text, message] of invalid) {
    test(`refused: ${text}`, () => {
      assert.throws(
        () => parsePolicy(text),
        (err: unknown) => err instanceof PolicyError && message.test(err.message),
      );
    });
  }
  test("label selectors", () => {
    const sel = {
      matchLabels: { app: "web" },
      matchExpressions: [
        { key: "tier", operator: "In" as const, values: ["a", "b"] },
        { key: "x", operator: "DoesNotExist" as const, values: [] },
      ],
    };
    assert.equal(matchesSelector({ app: "web", tier: "a" }, sel), true);
    assert.equal(matchesSelector({ app: "web", tier: "c" }, sel), false);
    assert.equal(matchesSelector({ app: "web", tier: "a", x: "" }, sel), false);
  });
  test("property: any text is a policy or a PolicyError, nothing else", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 200 }),
          fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
        ),
        (text) => {
          try {
            parsePolicy(text);
          } catch (err) {
            if (!(err instanceof PolicyError)) throw err;
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});
