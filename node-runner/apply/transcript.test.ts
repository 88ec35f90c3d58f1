// The apply engine without root: the golden transcripts recorded from real namespaces
// (test/node-runner/apply.test.ts) are replayed; the engine must issue exactly the recorded
// commands, with the recorded input, and reach the recorded outcomes.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { RecordStore } from "./records.ts";
import { replayRunner, transcriptScenario, type Transcript } from "./transcript.ts";

const dir = path.join(import.meta.dirname, "..", "testdata", "transcripts");

describe("apply engine against golden transcripts (no root)", () => {
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()) {
    test(file.replace(/\.json$/, ""), async () => {
      const golden = JSON.parse(readFileSync(path.join(dir, file), "utf8")) as Transcript;
      const replay = replayRunner(golden.commands);
      const state = mkdtempSync(path.join(os.tmpdir(), "pnct-replay-"));
      try {
        const outcomes = await transcriptScenario(
          golden.backend,
          replay.run,
          new RecordStore(state),
          { fd: -1, inode: "4026532000" },
          "6c0e5c7e-3f0a-4b8e-9d59-2f1b7c1d0a11",
          () => undefined,
        );
        assert.deepEqual(outcomes, golden.outcomes);
        replay.done();
      } finally {
        rmSync(state, { recursive: true, force: true });
      }
    });
  }

  test("a command the transcript does not expect fails the replay, naming both", async () => {
    const replay = replayRunner([{ argv: ["iptables-nft-save"], stdin: "", code: 0, stdout: "" }]);
    await assert.rejects(
      Promise.resolve().then(() => replay.run({ fd: -1, inode: "1" }, ["nft", "list"], undefined)),
      /recorded: iptables-nft-save[\s\S]*now: {6}nft list/,
    );
  });
});
