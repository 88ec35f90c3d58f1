import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, test } from "node:test";
import { pino, type Bindings, type Logger } from "pino";
import { deferredChild } from "./deferred-logger.ts";

function capture(level: string): { log: Logger; lines: Record<string, unknown>[]; children: () => number } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const log = pino({ level }, stream);
  let made = 0;
  type Child = (this: Logger, bindings: Bindings) => Logger;
  const original = Reflect.get(log, "child") as unknown as Child;
  // pino's children inherit from their parent: every child made below this logger is counted.
  const counted: Child = function (this: Logger, bindings: Bindings) {
    made++;
    return original.call(this, bindings);
  };
  log.child = counted as unknown as Logger["child"];
  return { log, lines, children: () => made };
}

describe("deferredChild", () => {
  test("nothing logged at an enabled level: no child is made", () => {
    const { log, lines, children } = capture("info");
    const child = deferredChild(log, { ceId: "1" });
    child.debug({ x: 1 }, "not at this level");
    child.trace("nor this");
    assert.equal(child.isLevelEnabled("debug"), false);
    assert.equal(child.level, "info");
    assert.equal(children(), 0);
    assert.deepEqual(lines, []);
  });

  test("a line carries the bindings, nested ones too, as a child's would", async () => {
    const { log, lines, children } = capture("info");
    const outer = deferredChild(log, { ceId: "1" });
    const inner = deferredChild(outer, { pod: { name: "web-1" } });
    inner.warn({ detail: "d" }, "said");
    outer.info("also");
    await new Promise((r) => setImmediate(r));
    assert.equal(children(), 2); // one each, made when the first line was
    assert.equal(lines.length, 2);
    assert.deepEqual([lines[0]?.ceId, lines[0]?.pod, lines[0]?.detail, lines[0]?.msg], ["1", { name: "web-1" }, "d", "said"]);
    assert.deepEqual([lines[1]?.ceId, lines[1]?.pod, lines[1]?.msg], ["1", undefined, "also"]);
  });

  test("a level set on it is its own, not the parent's", () => {
    const { log } = capture("info");
    const child = deferredChild(log, { a: 1 });
    child.level = "debug";
    assert.equal(child.isLevelEnabled("debug"), true);
    assert.equal(log.level, "info");
  });
});
