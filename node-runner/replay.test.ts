import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ReplayCache } from "./replay.ts";

describe("replay cache", () => {
  test("a nonce is fresh once, then a replay until its signature expired", () => {
    const cache = new ReplayCache(10);
    assert.equal(cache.remember("k/n1", 2000, 1000), "fresh");
    assert.equal(cache.remember("k/n1", 2000, 1500), "replay");
    // After expiry a replay fails freshness anyway; the cache may forget it.
    assert.equal(cache.remember("k/n1", 4000, 2500), "fresh");
  });

  test("bounded: expired entries make room; a cache full of live nonces refuses (503 upstream)", () => {
    const cache = new ReplayCache(2);
    assert.equal(cache.remember("a", 1100, 1000), "fresh");
    assert.equal(cache.remember("b", 5000, 1000), "fresh");
    assert.equal(cache.remember("c", 5000, 1200), "fresh", "a expired at 1100 and was evicted");
    assert.equal(cache.remember("d", 5000, 1300), "full");
    assert.equal(cache.remember("b", 5000, 1300), "replay");
  });
});
