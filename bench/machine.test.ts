// The benchmarks' teardown, in a process of its own (it takes over SIGINT and SIGTERM): what a
// benchmark made is undone once, the last step first, at its end, when it fails or when it is
// interrupted.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { describe, test } from "node:test";

const machine = path.join(import.meta.dirname, "machine.ts");

/** A process with three teardown steps (the middle one fails); `then` runs once they are added. */
function withTeardown(then: string): {
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  ready: Promise<void>;
  signal: (s: NodeJS.Signals) => void;
} {
  const script = `
    import { Teardown } from ${JSON.stringify(machine)};
    const teardown = new Teardown();
    teardown.add(() => console.log("step added first"));
    teardown.add(() => { throw new Error("boom"); });
    teardown.add(async () => { await new Promise((r) => setTimeout(r, 20)); console.log("step added last"); });
    console.log("ready");
    ${then}`;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  const ready = new Promise<void>((resolve) => {
    child.stdout.on("data", (c: Buffer) => {
      stdout += c.toString();
      if (stdout.includes("ready")) resolve();
    });
  });
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.once("exit", (code) => {
      resolve({ code, stdout, stderr });
    }),
  );
  return { done, ready, signal: (s) => child.kill(s) };
}

describe("Teardown", () => {
  for (const [signal, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    test(`${signal}: every step runs, the last added first, a failing one reported, then exit ${code}`, async () => {
      const p = withTeardown("setInterval(() => {}, 1000);");
      await p.ready;
      p.signal(signal);
      const { code: exitCode, stdout, stderr } = await p.done;
      assert.equal(exitCode, code);
      assert.deepEqual(stdout.trim().split("\n"), ["ready", "step added last", "step added first"]);
      assert.match(stderr, /cleanup step failed: boom/);
    });
  }

  test("a failure outside the benchmark's try/finally: its error reported, every step run once, exit 1", async () => {
    const { code, stdout, stderr } = await withTeardown('await new Promise((r) => setTimeout(r, 10)); throw new Error("the control plane did not start");')
      .done;
    assert.equal(code, 1);
    assert.deepEqual(stdout.trim().split("\n"), ["ready", "step added last", "step added first"]);
    assert.match(stderr, /the control plane did not start/);
    assert.match(stderr, /cleanup step failed: boom/);
  });

  test("a failure inside it, after its finally ran the steps: they do not run again, exit 1", async () => {
    const { code, stdout } = await withTeardown('try { throw new Error("no pods marked"); } finally { await teardown.run(); }').done;
    assert.equal(code, 1);
    assert.deepEqual(stdout.trim().split("\n"), ["ready", "step added last", "step added first"]);
  });

  test("at the end: run() as often as the benchmark's paths call it, each step once", async () => {
    const { code, stdout } = await withTeardown("await Promise.all([teardown.run(), teardown.run()]); await teardown.run();").done;
    assert.equal(code, 0);
    assert.deepEqual(stdout.trim().split("\n"), ["ready", "step added last", "step added first"]);
  });
});
