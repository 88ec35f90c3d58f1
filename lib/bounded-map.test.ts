import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { BoundedMap } from "./bounded-map.ts";

test("the entry used longest ago goes first; reads count as use", () => {
  const m = new BoundedMap<string, number>(2);
  m.set("a", 1);
  m.set("b", 2);
  assert.equal(m.get("a"), 1);
  m.set("c", 3);
  assert.equal(m.has("b"), false);
  assert.deepEqual([m.get("a"), m.get("c")], [1, 3]);
});

test("clear forgets every entry", () => {
  const m = new BoundedMap<string, number>(2);
  m.set("a", 1);
  m.set("b", 2);
  m.clear();
  assert.deepEqual([m.size, m.has("a"), m.get("b")], [0, false, undefined]);
});

test("undefined values are kept and told apart from absence", () => {
  const m = new BoundedMap<string, number | undefined>(2);
  m.set("x", undefined);
  assert.equal(m.has("x"), true);
  assert.equal(m.has("y"), false);
});

test("property: never more than its limit, and the last set is always there", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 20 }), fc.array(fc.tuple(fc.constantFrom("get", "set", "delete"), fc.nat(30))), (limit, ops) => {
      const m = new BoundedMap<number, number>(limit);
      for (const [op, k] of ops) {
        if (op === "set") {
          m.set(k, k);
          assert.equal(m.get(k), k);
        } else if (op === "get") m.get(k);
        else m.delete(k);
        assert.ok(m.size <= limit);
      }
    }),
  );
});
