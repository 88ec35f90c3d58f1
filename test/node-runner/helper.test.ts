// The command helper (node-runner/netns-exec, the Go binary the image carries) on real test
// pods: the same commands, the same answers as nsenter from the node-runner itself, each in its
// own pod's namespace when many run at once, hostile lines ignored, a helper that dies replaced.
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../../contract/capture-config.ts";
import { nsenterRunner, type NetnsRunner } from "../../node-runner/apply/commands.ts";
import { RecordStore } from "../../node-runner/apply/records.ts";
import { applierChooser } from "../../node-runner/backends.ts";
import { spawn } from "node:child_process";
import { mkdtempSync, readlinkSync, rmSync } from "node:fs";
import os from "node:os";
import fc from "fast-check";
import { helperRunner, NETNS_EXEC, resolveExecutable } from "../../node-runner/helper-runner.ts";
import { openNetns, resolvePodNetns, type OpenNetns } from "../../node-runner/netns.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { assertGoModuleClean, goProgram, goProgramsUnavailableReason } from "../support/go-programs.ts";
import { TestPods, testPodsUnavailableReason } from "../support/test-pods.ts";

const unavailable = testPodsUnavailableReason() ?? goProgramsUnavailableReason();

describe("node-runner command helper [needs root]", skipUnlessCI(unavailable), () => {
  let pods: TestPods;
  let helper: ReturnType<typeof helperRunner>;
  const opened: OpenNetns[] = [];
  before(() => {
    assertAvailable(unavailable);
    helper = helperRunner(goProgram(NETNS_EXEC));
    pods = TestPods.create();
  });
  after(async () => {
    helper.stop();
    for (const n of opened) n.close();
    await pods.destroy();
  });

  async function netnsOf(): Promise<{ netns: OpenNetns; exec: (argv: string[]) => string }> {
    const pod = pods.add();
    const resolved = await resolvePodNetns({ uid: pod.uid, ips: [pod.ip] }, { cgroupRoot: pods.cgroupRoot });
    assert.ok(resolved.found);
    const netns = openNetns(resolved.netns);
    opened.push(netns);
    return { netns, exec: (argv) => pod.exec(argv) };
  }

  test("gofmt and go vet (amd64 and arm64: setns has a number per architecture) are clean", () => {
    assertGoModuleClean(path.join(import.meta.dirname, "../../node-runner/netns-exec"));
  });

  test("runs in the pod's namespace, with input, exactly as nsenter from the node-runner does", async () => {
    const { netns } = await netnsOf();
    const viaHelper = await helper.run(netns, ["ip", "-o", "addr", "show", "dev", "eth0"]);
    const direct = await nsenterRunner(netns, ["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert.equal(viaHelper.code, 0, viaHelper.stderr);
    assert.equal(viaHelper.stdout, direct.stdout);
    const restore = await helper.run(netns, ["iptables-nft-restore", "--noflush"], "*nat\n:PODNET_HELPER_TEST - [0:0]\nCOMMIT\n");
    assert.equal(restore.code, 0, restore.stderr);
    assert.match((await helper.run(netns, ["iptables-nft-save", "-t", "nat"])).stdout, /:PODNET_HELPER_TEST/);
    const failing = await helper.run(netns, ["sh", "-c", "echo no >&2; exit 3"]);
    assert.deepEqual([failing.code, failing.stderr.trim()], [3, "no"]);
  });

  test("many commands at once get their own answers", async () => {
    const { netns } = await netnsOf();
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => helper.run(netns, ["sh", "-c", `echo ${i}`])));
    assert.deepEqual(
      answers.map((a) => a.stdout.trim()),
      Array.from({ length: 20 }, (_, i) => String(i)),
    );
  });

  test("a helper that is gone is started again on the next command", async () => {
    const { netns } = await netnsOf();
    helper.stop();
    assert.equal((await helper.run(netns, ["true"])).code, 0);
  });

  test("many commands in many namespaces at once: each runs in its own pod's namespace, the helper stays in the node's", async () => {
    const pods3 = await Promise.all([netnsOf(), netnsOf(), netnsOf()]);
    const expected = await Promise.all(pods3.map(({ netns }) => nsenterRunner(netns, ["readlink", "/proc/self/ns/net"])));
    for (let round = 0; round < 5; round++) {
      const got = await Promise.all(pods3.flatMap(({ netns }) => Array.from({ length: 6 }, () => helper.run(netns, ["readlink", "/proc/self/ns/net"]))));
      assert.deepEqual(
        got.map((r) => r.stdout),
        pods3.flatMap((_, i) => Array.from({ length: 6 }, () => expected[i]?.stdout)),
      );
    }
    const helperPid = Number((await helper.run(pods3[0].netns, ["sh", "-c", "echo $PPID"])).stdout.trim());
    assert.equal(readlinkSync(`/proc/${helperPid}/ns/net`), readlinkSync("/proc/self/ns/net"), "the helper's main thread never leaves the node's namespace");
  });

  test("a command that cannot start: 127 with the reason; a namespace that is not one: 127, nothing run", async () => {
    const { netns } = await netnsOf();
    const missing = await helper.run(netns, ["/nonexistent/iptables-restore"]);
    assert.equal(missing.code, 127);
    assert.match(missing.stderr, /no such file/);
    const bad = await helper.run({ ...netns, fd: 0 }, ["touch", "/tmp/pnct-must-not-exist"]);
    assert.equal(bad.code, 127, bad.stderr);
    assert.match(bad.stderr, /cannot (open|enter) the network namespace/);
  });

  test("property: hostile request lines are ignored; the helper still answers the next real one", async () => {
    const child = spawn(goProgram(NETNS_EXEC), [], { stdio: ["pipe", "pipe", "inherit"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (t: string) => (out += t));
    const lines = fc.sample(
      fc.oneof(
        fc.string({ unit: "binary", maxLength: 200 }),
        fc.json(),
        fc.constant('{"id":1}'),
        fc.constant('{"id":"x","netns":"/proc/self/ns/net","argv":["true"]}'),
        fc.constant('{"id":2,"netns":"/proc/self/ns/net","argv":[]}'),
        fc.constant('{"id":3,"netns":"/proc/self/ns/net","builtin":"other"}'),
        fc.constant('{"id":4,"netns":"/proc/self/ns/net","builtin":"nft-tables","argv":["true"]}'),
      ),
      300,
    );
    for (const line of lines) child.stdin.write(`${line.replace(/\n/g, " ")}\n`);
    child.stdin.write(`${JSON.stringify({ id: 7, netns: "/proc/self/ns/net", argv: ["echo", "alive"], input: "" })}\n`);
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (out.includes('"id":7')) {
          clearInterval(poll);
          resolve();
        }
      }, 10);
    });
    child.stdin.end();
    const answers = out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { id: number; stdout: string });
    assert.deepEqual(
      answers.map((a) => [a.id, a.stdout]),
      [[7, "alive\n"]],
      "only the real request is answered",
    );
  });

  test("the helper's path: a path as given, a name looked up on PATH, nothing when absent; a helper that cannot start fails its commands with the reason", async () => {
    const built = goProgram(NETNS_EXEC);
    assert.equal(resolveExecutable(built), built);
    assert.equal(resolveExecutable(NETNS_EXEC, `/nonexistent:${path.dirname(built)}`), built);
    assert.equal(resolveExecutable(NETNS_EXEC, "/nonexistent"), undefined);
    const broken = helperRunner("/nonexistent/podnet-netns-exec");
    const { netns } = await netnsOf();
    const r = await broken.run(netns, ["true"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /cannot run.*ENOENT/);
  });

  test("nft-tables: the namespace's nftables tables, listed by the helper (none in a new pod's)", async () => {
    const { netns, exec } = await netnsOf();
    assert.deepEqual(await helper.nftTables(netns), []);
    exec(["iptables-nft", "-t", "nat", "-N", "SOMEONE_ELSES"]);
    exec(["nft", "add", "table", "inet", "mine"]);
    assert.deepEqual((await helper.nftTables(netns))?.sort(), ["inet mine", "ip nat"]);
  });

  test("the node-runner's engine choice: a new pod's namespace costs one restore (no save); one holding rules is saved first; the rules are the same", async () => {
    const stateDir = mkdtempSync(path.join(os.tmpdir(), "pnct-choose-"));
    try {
      const commands: string[] = [];
      const run: NetnsRunner = (target, argv, input) => {
        commands.push(argv[0] ?? "");
        return helper.run(target, argv, input);
      };
      const records = new RecordStore(stateDir);
      const choose = applierChooser({ backend: "auto", records, nodeDefault: "iptables-nft", run, nftTables: helper.nftTables });
      const config = parseCaptureConfig(DEFAULT_CAPTURE_CONFIG);
      const applyIn = async (pod: { netns: OpenNetns; exec: (argv: string[]) => string }, uid: string): Promise<string[]> => {
        commands.length = 0;
        const target = { fd: pod.netns.fd, inode: pod.netns.inode, legacyTables: () => false };
        assert.equal((await (await choose(target, uid)).apply(config)).result, "applied");
        return [...commands];
      };
      const first = await netnsOf();
      assert.deepEqual(
        await applyIn(first, "uid-first"),
        ["iptables-nft-restore", "iptables-nft-save"],
        "the first pod of a plan: restore, then one save to learn its saved form",
      );
      const fresh = await netnsOf();
      assert.deepEqual(await applyIn(fresh, "uid-fresh"), ["iptables-nft-restore"], "a new pod's namespace: no save at all");
      const busy = await netnsOf();
      busy.exec(["iptables-nft", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1", "-j", "RETURN"]);
      assert.deepEqual(
        await applyIn(busy, "uid-busy"),
        ["iptables-nft-save", "iptables-nft-restore"],
        "a namespace holding rules is saved first (the variant probe, the state before)",
      );
      const rules = (pod: { exec: (argv: string[]) => string }): string =>
        pod
          .exec(["iptables-nft-save", "-t", "nat"])
          .split("\n")
          .filter((l) => l.startsWith("-A ISTIO") || /-j ISTIO/.test(l))
          .join("\n");
      assert.equal(rules(fresh), rules(first));
      assert.equal(rules(busy), rules(first));
      assert.match(busy.exec(["iptables-nft-save", "-t", "nat"]), /-A OUTPUT -d 192.0.2.1\/32 -j RETURN/, "the foreign rule stays");

      // Untouched (programmed while the identity check is answered, undone by remove): only a
      // namespace holding no table at all that this runner has no record of.
      const targetOf = (pod: { netns: OpenNetns }) => ({ fd: pod.netns.fd, inode: pod.netns.inode, legacyTables: () => false });
      const blank = await netnsOf();
      const chosen = await choose(targetOf(blank), "uid-blank");
      assert.equal(chosen.untouched, true, "a new pod's namespace");
      assert.equal((await choose(targetOf(busy), "uid-busy")).untouched, false, "one this runner programmed");
      const foreign = await netnsOf();
      foreign.exec(["iptables-nft", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.2", "-j", "ACCEPT"]);
      assert.equal((await choose(targetOf(foreign), "uid-foreign")).untouched, false, "one holding someone else's rules");
      // Applied and removed again: no ISTIO_ rule is left.
      assert.equal((await chosen.apply(config)).result, "applied");
      assert.equal(await chosen.remove(), "removed");
      assert.doesNotMatch(blank.exec(["iptables-nft-save"]), /ISTIO/);
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
