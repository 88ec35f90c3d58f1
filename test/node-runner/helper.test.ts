// The command helper (node-runner/command-helper.ts) on real test pods: the same commands, the
// same answers as nsenter from the node-runner itself, and a helper that dies is replaced.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { nsenterRunner } from "../../node-runner/apply.ts";
import { helperRunner } from "../../node-runner/helper-runner.ts";
import { openNetns, resolvePodNetns, type OpenNetns } from "../../node-runner/netns.ts";
import { assertAvailable, skipUnlessCI } from "../support/environment.ts";
import { TestPods, testPodsUnavailableReason } from "../support/test-pods.ts";

const unavailable = testPodsUnavailableReason();

describe("node-runner command helper [needs root]", skipUnlessCI(unavailable), () => {
  let pods: TestPods;
  const helper = helperRunner();
  const opened: OpenNetns[] = [];
  before(() => {
    assertAvailable(unavailable);
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
    assert.deepEqual(answers.map((a) => a.stdout.trim()), Array.from({ length: 20 }, (_, i) => String(i)));
  });

  test("a helper that is gone is started again on the next command", async () => {
    const { netns } = await netnsOf();
    helper.stop();
    assert.equal((await helper.run(netns, ["true"])).code, 0);
  });
});
