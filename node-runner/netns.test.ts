import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import {
  cgroupBelongsToPod,
  expandIPv6,
  ipv6FromIfInet6,
  localIPv4FromFibTrie,
  NetnsGoneError,
  openNetns,
  podCgroupDirs,
  podCgroupPids,
  podUidPattern,
  processStartTime,
  resolvePodNetns,
} from "./netns.ts";

const UID = "6c0e5c7e-3f0a-4b8e-9d59-2f1b7c1d0a11";
const UID_ = UID.replace(/-/g, "_");

const fibTrie = (ip: string): string =>
  `Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- ${ip}\n        /32 host LOCAL\nLocal:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n`;

/** A fake /proc: pid → { cgroup, netns inode, start time, IPv4 address, IPv6 (if_inet6 hex) }. */
function procTree(entries: Record<string, { cgroup?: string; inode?: string; start?: number; ip?: string; ip6hex?: string }>): string {
  const root = mkdtempSync(path.join(os.tmpdir(), "pnct-proc-"));
  for (const [pid, e] of Object.entries(entries)) {
    const dir = path.join(root, pid);
    mkdirSync(path.join(dir, "ns"), { recursive: true });
    mkdirSync(path.join(dir, "net"));
    if (e.cgroup !== undefined) writeFileSync(path.join(dir, "cgroup"), e.cgroup);
    if (e.inode !== undefined) symlinkSync(`net:[${e.inode}]`, path.join(dir, "ns", "net"));
    writeFileSync(
      path.join(dir, "stat"),
      `${pid} (pause (x)) S 1 ${pid} ${pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 ${e.start ?? 1000} 1019904 1 18446744073709551615`,
    );
    writeFileSync(path.join(dir, "net", "fib_trie"), e.ip === undefined ? "" : fibTrie(e.ip));
    writeFileSync(
      path.join(dir, "net", "if_inet6"),
      e.ip6hex === undefined ? "" : `${e.ip6hex} 02 40 00 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n`,
    );
  }
  return root;
}

const roots: string[] = [];
after(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});
function tree(entries: Parameters<typeof procTree>[0]): string {
  const r = procTree({ "1": { cgroup: "0::/init.scope\n", inode: "4026531840" }, self: { inode: "4026531840" }, ...entries });
  roots.push(r);
  return r;
}

describe("cgroup paths → pod UID", () => {
  const layouts: [string, string][] = [
    ["cgroup v1, cgroupfs, containerd", `12:pids:/kubepods/besteffort/pod${UID}/0a1b2c\n11:memory:/kubepods/besteffort/pod${UID}/0a1b2c\n`],
    ["cgroup v1, cgroupfs, guaranteed QoS", `4:cpu,cpuacct:/kubepods/pod${UID}/0a1b2c\n`],
    ["cgroup v1, systemd driver", `1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/cri-containerd-0a1b.scope\n`],
    ["cgroup v2, systemd, containerd", `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice/cri-containerd-0a1b.scope\n`],
    ["cgroup v2, systemd, CRI-O", `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/crio-0a1b.scope\n`],
    ["cgroup v2, cgroupfs", `0::/kubepods/burstable/pod${UID}/0a1b2c\n`],
    ["upper-case UID in the path", `0::/kubepods/burstable/pod${UID.toUpperCase()}/x\n`],
  ];
  for (const [name, file] of layouts) {
    test(name, () => {
      assert.equal(cgroupBelongsToPod(file, podUidPattern(UID)), true);
    });
  }
  test("seen from the node-runner's own cgroup namespace (a /.. prefix)", () => {
    assert.equal(
      cgroupBelongsToPod(
        `0::/../../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/cri-containerd-0a1b.scope\n`,
        podUidPattern(UID),
      ),
      true,
    );
  });
  // Security (issue 13, attack 4): only the kubelet's pod cgroup, directly under kubepods.
  test("attack: cgroup look-alikes outside the kubelet's pod cgroup do not match", () => {
    const p = podUidPattern(UID);
    for (const file of [
      `0::/user.slice/evil-pod${UID}/x\n`,
      `0::/user.slice/pod${UID}/x\n`,
      `0::/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/ctr/pod${UID}\n`,
      `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11111111_2222.slice/cri-containerd-x.scope/kubepods-besteffort-pod${UID_}.slice\n`,
      `0::/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod${UID_}.slice/x\n`,
      `0::/system.slice/kubepods/pod${UID}/x\n`,
      `0::/kubepods/guaranteed/pod${UID}/x\n`,
    ]) {
      assert.equal(cgroupBelongsToPod(file, p), false, file);
    }
  });
  test("other pods, prefixes and look-alikes do not match", () => {
    const p = podUidPattern(UID);
    assert.equal(cgroupBelongsToPod(`0::/kubepods/besteffort/pod${UID}0/x\n`, p), false);
    assert.equal(cgroupBelongsToPod(`0::/kubepods/besteffort/xpod${UID}/x\n`, p), false);
    assert.equal(cgroupBelongsToPod("0::/kubepods/besteffort/pod00000000-3f0a-4b8e-9d59-2f1b7c1d0a11/x\n", p), false);
    assert.equal(cgroupBelongsToPod("garbage", p), false);
  });
  test("a UID with regex or path characters is refused", () => {
    assert.throws(() => podUidPattern(".*"), /not a pod UID/);
    assert.throws(() => podUidPattern("../x"), /not a pod UID/);
  });
});

describe("proc file parsers", () => {
  test("start time is field 22, even with spaces and parentheses in the command", () => {
    assert.equal(processStartTime("42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 0"), 777);
    assert.equal(processStartTime("garbage"), undefined);
  });
  test("fib_trie: local /32 addresses only", () => {
    assert.deepEqual([...localIPv4FromFibTrie(fibTrie("10.244.3.17"))].sort(), ["10.244.3.17", "127.0.0.1"]);
  });
  test("if_inet6 and IPv6 expansion", () => {
    assert.deepEqual([...ipv6FromIfInet6("fd000010024400010000000000000009 02 40 00 80 eth0\nzz\n")], ["fd00:0010:0244:0001:0000:0000:0000:0009"]);
    assert.equal(expandIPv6("fd00:10:244:1::9"), "fd00:0010:0244:0001:0000:0000:0000:0009");
    assert.equal(expandIPv6("::1"), "0000:0000:0000:0000:0000:0000:0000:0001");
  });
});

describe("podCgroupPids on a fixture cgroup filesystem", () => {
  test("pods in every hierarchy and layout, in any order, are each found in their own cgroup and its children", () => {
    const cgroupFs = mkdtempSync(path.join(os.tmpdir(), "pnct-cgroupfs-"));
    try {
      // One pod per (hierarchy, layout): the lookup that found the last one must not miss the next.
      const pods = ["", "unified", "pids", "memory"].flatMap((hierarchy, h) =>
        podCgroupDirs(UID).map((_, layout) => {
          const uid = `${UID.slice(0, -4)}${String(h)}${String(layout)}00`;
          const dir = path.join(cgroupFs, hierarchy, podCgroupDirs(uid)[layout] ?? "");
          mkdirSync(path.join(dir, "container"), { recursive: true });
          writeFileSync(path.join(dir, "cgroup.procs"), `${String(1000 + h * 10 + layout)}\n`);
          writeFileSync(path.join(dir, "container", "cgroup.procs"), `${String(2000 + h * 10 + layout)}\n`);
          return { uid, pids: [1000 + h * 10 + layout, 2000 + h * 10 + layout] };
        }),
      );
      for (const pod of [...pods, ...[...pods].reverse(), ...pods.filter((_, i) => i % 3 === 0)])
        assert.deepEqual(podCgroupPids(pod.uid, { cgroupFs }), pod.pids, pod.uid);
      assert.equal(podCgroupPids(UID, { cgroupFs }), undefined, "no cgroup: the caller scans /proc");
    } finally {
      rmSync(cgroupFs, { recursive: true, force: true });
    }
  });
});

describe("resolvePodNetns on fixture trees", () => {
  const v2 = `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice/cri-containerd-aa.scope\n`;

  test("finds the pod's namespace and prefers the oldest process", async () => {
    const procRoot = tree({
      "300": { cgroup: v2, inode: "4026532500", start: 9000, ip: "10.244.3.17" },
      "200": { cgroup: v2, inode: "4026532500", start: 5000, ip: "10.244.3.17" },
      "400": { cgroup: "0::/kubepods/besteffort/podother/x\n", inode: "4026532600", start: 1, ip: "10.244.3.18" },
    });
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.deepEqual(r, {
      found: true,
      netns: { inode: "4026532500", path: path.join(procRoot, "200", "ns", "net"), pid: 200, processes: 2, hostInode: "4026531840" },
      method: "proc-scan",
    });
  });

  test("skips the host netns and unreadable entries", async () => {
    const procRoot = tree({
      "210": { cgroup: v2, inode: "4026531840", start: 1, ip: "10.244.3.17" }, // host netns (like pid 1)
      "220": { cgroup: v2 }, // no ns/net: exited or unreadable
      "230": { inode: "4026532700" }, // no cgroup file
      "240": { cgroup: v2, inode: "4026532701", start: 50, ip: "10.244.3.17" },
    });
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.equal(r.found && r.netns.inode, "4026532701");
  });

  test("a pod only in the host netns (hostNetwork) is reported as such", async () => {
    const procRoot = tree({ "210": { cgroup: v2, inode: "4026531840", ip: "10.244.3.17" } });
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.equal(!r.found && r.reason, "host-netns-only");
  });

  test("the namespace must hold one of the pod's IPs (v4 or v6)", async () => {
    const procRoot = tree({ "250": { cgroup: v2, inode: "4026532800", ip: "10.244.9.9", ip6hex: "fd000010024400010000000000000009" } });
    const wrong = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.equal(!wrong.found && wrong.reason, "ip-mismatch");
    const v6 = await resolvePodNetns({ uid: UID, ips: ["fd00:10:244:1::9"] }, { procRoot });
    assert.equal(v6.found && v6.netns.inode, "4026532800");
  });

  // Security (issue 13, attack 4): the victim's IP in a second netns of "the pod" → refuse.
  test("attack: two namespaces of the pod hold its IP → ambiguous, never chosen", async () => {
    const procRoot = tree({
      "200": { cgroup: v2, inode: "4026532500", start: 5000, ip: "10.244.3.17" },
      "300": { cgroup: `0::/kubepods/besteffort/pod${UID}/evil\n`, inode: "4026532999", start: 9000, ip: "10.244.3.17" },
    });
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.equal(!r.found && r.reason, "ambiguous-netns");
  });

  test("attack: a look-alike cgroup holding the victim's IP is not a candidate", async () => {
    const procRoot = tree({
      "200": { cgroup: v2, inode: "4026532500", start: 5000, ip: "10.244.3.17" },
      "300": { cgroup: `0::/user.slice/evil-pod${UID}/x\n`, inode: "4026532999", start: 1, ip: "10.244.3.17" },
    });
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.equal(r.found && r.netns.inode, "4026532500");
  });

  // Security (issue 13, attack 3): fail closed when the host's netns is not known for certain.
  test("attack surface: the host netns cannot be read → refuse, never guess", async () => {
    const procRoot = procTree({ "200": { cgroup: v2, inode: "4026532500", ip: "10.244.3.17" } });
    roots.push(procRoot);
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot });
    assert.equal(!r.found && r.reason, "host-netns-unknown");
    const split = tree({ self: { inode: "4026530001" }, "200": { cgroup: v2, inode: "4026532500", ip: "10.244.3.17" } });
    const s = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot: split });
    assert.equal(!s.found && s.reason, "host-netns-unknown", "self and PID 1 disagree: not hostNetwork+hostPID");
  });

  test("no process of the pod", async () => {
    const r = await resolvePodNetns({ uid: UID, ips: ["10.244.3.17"] }, { procRoot: tree({}) });
    assert.equal(!r.found && r.reason, "no-process");
  });
});

// Security (issue 13, attack 5): the path is opened once and its inode checked; a PID that now
// belongs to another process (here: this process, in the host's netns) is refused.
describe("openNetns", () => {
  const own = (): string => readlinkSync("/proc/self/ns/net").replace(/^net:\[(\d+)\]$/, "$1");
  test("opens a namespace whose inode is the one resolved", () => {
    const netns = openNetns({ inode: own(), path: "/proc/self/ns/net", pid: process.pid, processes: 1, hostInode: "1" });
    assert.equal(netns.inode, own());
    assert.ok(netns.fd >= 0);
    netns.close();
    netns.close();
  });
  test("attack: the PID now names another namespace → refused", () => {
    assert.throws(() => openNetns({ inode: "4026599999", path: "/proc/self/ns/net", pid: process.pid, processes: 1, hostInode: "1" }), NetnsGoneError);
  });
  test("attack: the namespace is the host's → refused even when the inode matches", () => {
    assert.throws(() => openNetns({ inode: own(), path: "/proc/self/ns/net", pid: process.pid, processes: 1, hostInode: own() }), NetnsGoneError);
  });
  test("a process that is gone → refused", () => {
    assert.throws(() => openNetns({ inode: own(), path: "/proc/999999999/ns/net", pid: 999999999, processes: 1, hostInode: "1" }), NetnsGoneError);
  });
});
