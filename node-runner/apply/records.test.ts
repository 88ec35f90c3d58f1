// The node-runner's per-namespace records (apply.ts' RecordStore): kept across a restart, the directory listed once
// (a new pod's namespace has no record without a read), written whole or not at all.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { RecordStore, type NetnsRecord } from "./records.ts";

const base = mkdtempSync(path.join(os.tmpdir(), "pnct-records-"));
const record = (inode: string, podUid = "uid-1"): NetnsRecord => ({
  podUid,
  netnsInode: inode,
  digest: "d",
  variant: "iptables-nft",
  builtin: {},
  owned: {},
  netSetup: [],
});

describe("RecordStore", () => {
  after(() => {
    rmSync(base, { recursive: true, force: true });
  });

  test("a record outlives the process: a new store (a restarted runner) reads it from the directory", () => {
    const dir = path.join(base, "restart");
    const first = new RecordStore(dir);
    assert.equal(first.get("4026532001"), undefined);
    first.put(record("4026532001"));
    assert.deepEqual(new RecordStore(dir).get("4026532001"), record("4026532001"));
    assert.deepEqual(readdirSync(dir), ["4026532001.json"], "no temporary file left");
  });

  test("the directory is listed once: a file that appears behind the store's back is not read (one writer per node)", () => {
    const dir = mkdtempSync(path.join(base, "listed-"));
    const store = new RecordStore(dir);
    store.put(record("4026532002"));
    writeFileSync(path.join(dir, "4026532003.json"), JSON.stringify(record("4026532003")));
    assert.equal(store.get("4026532003"), undefined);
    assert.deepEqual(new RecordStore(dir).get("4026532003"), record("4026532003"));
  });

  test("delete forgets the record and its file; a directory removed meanwhile is made again on the next write", () => {
    const dir = path.join(base, "removed");
    const store = new RecordStore(dir);
    store.put(record("4026532004"));
    store.delete("4026532004");
    assert.equal(store.get("4026532004"), undefined);
    assert.equal(existsSync(path.join(dir, "4026532004.json")), false);
    rmSync(dir, { recursive: true });
    store.put(record("4026532005", "uid-5"));
    assert.equal(new RecordStore(dir).get("4026532005")?.podUid, "uid-5");
  });

  test("sweep removes the records of namespaces not alive (files too, records of a restarted store's directory included) and keeps the others", () => {
    const dir = mkdtempSync(path.join(base, "sweep-"));
    writeFileSync(path.join(dir, "4026532010.json"), JSON.stringify(record("4026532010")));
    writeFileSync(path.join(dir, "nonces.jsonl"), "");
    const store = new RecordStore(dir);
    for (const inode of ["4026532011", "4026532012"]) store.put(record(inode));
    assert.deepEqual(store.sweep(new Set(["4026532012", "4026531840"])), { removed: 2, kept: 1 });
    assert.deepEqual(readdirSync(dir).sort(), ["4026532012.json", "nonces.jsonl"], "other files of the state directory stay");
    assert.equal(store.get("4026532011"), undefined);
    assert.deepEqual(store.get("4026532012"), record("4026532012"));
    assert.deepEqual(store.sweep(new Set(["4026532012"])), { removed: 0, kept: 1 });
  });

  test("an unreadable record is no record; a name that is not an inode is refused", () => {
    const dir = mkdtempSync(path.join(base, "bad-"));
    writeFileSync(path.join(dir, "4026532006.json"), "{not json");
    assert.equal(new RecordStore(dir).get("4026532006"), undefined);
    assert.throws(() => new RecordStore(dir).get("../etc/passwd"), /bad netns inode/);
    assert.throws(() => {
      new RecordStore(dir).put(record("1; rm -rf /"));
    }, /bad netns inode/);
  });

  test("the cache is bounded: the least recently used records are read again from their files", () => {
    const dir = path.join(base, "bounded");
    const store = new RecordStore(dir, 2);
    for (const inode of ["4026532007", "4026532008", "4026532009"]) store.put(record(inode, `uid-${inode}`));
    rmSync(path.join(dir, "4026532007.json"));
    assert.equal(store.get("4026532007"), undefined, "evicted, then read from the (removed) file");
    assert.equal(store.get("4026532009")?.podUid, "uid-4026532009");
  });
});
