import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { pino } from "pino";
import { generateTls } from "../cli/tls.ts";
import { followFiles, readServingTls } from "./tls-files.ts";

// The components' use of these on their real mounts, through a whole rotation: test/node/knative.test.ts.
test("a serving certificate and its key: read with its expiry; a key of another certificate, or not a certificate, refused naming the file", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-tls-"));
  try {
    const [a, b] = [generateTls(), generateTls()];
    const file = (name: string, text: string): string => {
      writeFileSync(path.join(dir, name), text);
      return path.join(dir, name);
    };
    const tls = readServingTls(file("a.crt", a.cert), file("a.key", a.key));
    assert.ok(tls.notAfter * 1000 > Date.now());
    assert.throws(() => readServingTls(file("a.crt", a.cert), file("b.key", b.key)), /b\.key is not the key of the certificate in .*a\.crt/);
    assert.throws(() => readServingTls(file("junk.crt", "junk"), file("a.key", a.key)), /junk\.crt: not a PEM certificate/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("followFiles: called with the new contents when a file changes, not when it is rewritten unchanged", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnct-tls-"));
  const file = path.join(dir, "ca.crt");
  writeFileSync(file, "one");
  const seen: string[] = [];
  const stop = followFiles([file], ([content]) => seen.push(content?.toString() ?? ""), { pollMs: 20, log: pino({ level: "silent" }) });
  try {
    writeFileSync(file, "one");
    await new Promise((r) => setTimeout(r, 100));
    writeFileSync(file, "two");
    for (let i = 0; i < 100 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(seen, ["two"]);
  } finally {
    stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
