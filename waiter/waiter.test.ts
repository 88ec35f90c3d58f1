// The waiter's own Go tests (waiter_test.go: the kubelet's file format, the probe port, the
// command line), run here so that `npm test` counts each; and its contract constants checked
// against contract/, where they are defined.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { assertAvailable, skipUnlessCI } from "../test/support/environment.ts";
import { assertGoModuleClean, WAIT_EXIT, goProgram, goProgramsUnavailableReason } from "../test/support/go-programs.ts";
import { CONTRACT_GO_FILE, contractGo } from "./generate-contract.ts";
import { MARK, STATUS_REFUSED } from "../contract/mark.ts";

const dir = import.meta.dirname;
const unavailable = goProgramsUnavailableReason();

test("waiter/contract.go is what waiter/generate-contract.ts makes of contract/", () => {
  assert.equal(readFileSync(CONTRACT_GO_FILE, "utf8"), contractGo(), "run: node --import tsx waiter/generate-contract.ts");
});

describe("the waiter's Go tests [needs Go]", skipUnlessCI(unavailable), () => {
  assertAvailable(unavailable);
  test("gofmt and go vet (amd64 and arm64) are clean", () => {
    assertGoModuleClean(dir);
  });

  // `go test -json`: one event per line; each finished Go test becomes a test here.
  const run = spawnSync("go", ["test", "-json", "-count=1", "./..."], { cwd: dir, encoding: "utf8" });
  const results = run.stdout
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as { Action: string; Test?: string; Output?: string })
    .filter((e) => e.Test !== undefined);
  test("go test ran", () => {
    assert.ok(
      results.some((e) => e.Action === "pass" || e.Action === "fail"),
      run.stderr || run.stdout,
    );
  });
  for (const end of results.filter((e) => e.Action === "pass" || e.Action === "fail")) {
    test(`go: ${end.Test ?? ""}`, () => {
      const output = results
        .filter((e) => e.Test === end.Test && e.Action === "output")
        .map((e) => e.Output)
        .join("");
      assert.equal(end.Action, "pass", output);
    });
  }
});

describe("the waiter binary with hostile input [needs Go]", skipUnlessCI(unavailable), () => {
  assertAvailable(unavailable);
  const run = (args: string[]) => spawnSync(goProgram("podnet-wait"), args, { encoding: "utf8", timeout: 10_000 });

  // Outside a pod, with no probe and a short timeout: a file is either refused (12, with the
  // reason in the termination log) or waited on until the timeout (10); never a crash.
  test("property: any annotations file is refused with its code or waited on, never a crash", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-waiter-"));
    try {
      const file = path.join(dir, "annotations");
      const log = path.join(dir, "termination-log");
      fc.assert(
        fc.property(fc.oneof(fc.string({ unit: "binary", maxLength: 200 }), fc.uint8Array({ maxLength: 200 })), (content) => {
          writeFileSync(file, content);
          const r = run([`--annotations=${file}`, `--termination-log=${log}`, "--no-probe", "--timeout=0.02", "--poll=5"]);
          assert.ok(r.status === WAIT_EXIT.badAnnotations || r.status === WAIT_EXIT.timeout, `exit ${String(r.status)}: ${r.stderr}`);
          assert.match(
            readFileSync(log, "utf8"),
            r.status === WAIT_EXIT.badAnnotations ? /^malformed annotations file .*: line \d+: / : /^timed out after 20 ms/,
          );
        }),
        { numRuns: 150 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a pod marked refused: the waiter exits at once with the refusal's reason in its termination message, whatever netns the mark names", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-waiter-"));
    try {
      const file = path.join(dir, "annotations");
      const log = path.join(dir, "termination-log");
      const reason = 'invalid capture configuration: traffic.sidecar.istio.io/excludeOutboundPorts: "99999" is invalid';
      // As the kubelet writes the file: key="Go-quoted value", one per line.
      writeFileSync(file, `${MARK.status}=${JSON.stringify(STATUS_REFUSED)}\n${MARK.reason}=${JSON.stringify(reason)}\n`);
      const started = Date.now();
      const r = run([`--annotations=${file}`, `--termination-log=${log}`, "--no-probe", "--timeout=60", "--poll=5"]);
      assert.equal(r.status, WAIT_EXIT.refused, r.stderr);
      assert.ok(Date.now() - started < 5000, "at once, not at the timeout");
      assert.equal(readFileSync(log, "utf8"), `refused by the podnet controller: ${reason}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("property: hostile option values end in the usage code with one line, never a wait", () => {
    fc.assert(
      fc.property(fc.constantFrom("timeout", "poll", "probe-every", "capture-port", "probe-target"), fc.string({ maxLength: 30 }), (option, value) => {
        fc.pre(!/^\s*[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$/.test(value) && !/^\d+\.\d+\.\d+\.\d+:\d+$/.test(value) && !/^0x[0-9a-f]+/i.test(value));
        const r = run(
          [`--${option}=${value}`, "--no-probe", "--timeout=0.01", "--annotations=/nonexistent"].filter((a, i) => i === 0 || !a.startsWith(`--${option}=`)),
        );
        assert.equal(r.status, WAIT_EXIT.usage, r.stderr);
        assert.match(r.stderr, /^podnet-wait: .+\n$/);
      }),
      { numRuns: 150 },
    );
  });
});
