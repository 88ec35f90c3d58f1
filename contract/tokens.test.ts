import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  checkCidr,
  checkGroup,
  checkInterfaceName,
  checkIPv4,
  checkIPv6,
  checkListenPort,
  checkMark,
  checkNumericId,
  checkPort,
  checkRouteTable,
  splitList,
} from "./tokens.ts";

const accepts = (check: (t: string) => { ok: boolean }, values: string[]): void => {
  for (const v of values) assert.equal(check(v).ok, true, `should accept ${JSON.stringify(v)}`);
};
const rejects = (check: (t: string) => { ok: boolean }, values: string[]): void => {
  for (const v of values) assert.equal(check(v).ok, false, `should reject ${JSON.stringify(v)}`);
};

describe("token checks", () => {
  test("ports: decimal 0-65535 only", () => {
    accepts(checkPort, ["0", "53", "15001", "65535"]);
    rejects(checkPort, ["", "-1", "65536", "080", "1e3", "0x50", " 80", "80 ", "8 0", "+80", "80\n", "*", "1.5"]);
  });
  test("listen ports exclude 0", () => {
    accepts(checkListenPort, ["1", "15006"]);
    rejects(checkListenPort, ["0", "70000"]);
  });
  test("UIDs/GIDs: non-negative 32-bit, not (uid_t)-1", () => {
    accepts(checkNumericId, ["0", "1337", "1000670000", "4294967294"]);
    rejects(checkNumericId, ["-1", "4294967295", "99999999999", "root", "13 37", "1337;"]);
  });
  test("groups: numeric or a plain name", () => {
    accepts(checkGroup, ["202", "java", "ftp", "_apt", "team-a"]);
    rejects(checkGroup, ["-j", "!java", "a b", "grp$", "x".repeat(33), "1e3x", "", "9999999999"]);
  });
  test("interface names: Linux-sized, no iptables/nft metacharacters", () => {
    accepts(checkInterfaceName, ["eth0", "net1", "k6t-eth0", "eth0.100", "tap_0", "a".repeat(15)]);
    rejects(checkInterfaceName, ["", "a".repeat(16), "eth+", "-j", "!eth0", "eth0 -j ACCEPT", "eth0;id", "eth/0", "eth:0", ".", "..", "é", "eth0\t"]);
  });
  test("marks and routing tables", () => {
    accepts(checkMark, ["1", "1337", "4294967295"]);
    rejects(checkMark, ["0", "0x539", "4294967296"]);
    accepts(checkRouteTable, ["133", "1", "252", "256"]);
    rejects(checkRouteTable, ["0", "253", "254", "255", "main"]);
  });
  test("IPv4 and IPv6 addresses", () => {
    accepts(checkIPv4, ["127.0.0.53", "10.96.0.10", "0.0.0.0"]);
    rejects(checkIPv4, ["010.0.0.1", "256.0.0.1", "1.2.3", "1.2.3.4/32", " 1.2.3.4"]);
    accepts(checkIPv6, ["::1", "::127.0.0.53", "fd00:10:96::a", "2001:db8::"]);
    rejects(checkIPv6, ["fe80::1%eth0", "1.2.3.4", "2001:db8::/32", "gggg::1", ":::"]);
  });
  test("CIDRs need a prefix length and print as Istio (Go netip) prints them", () => {
    assert.deepEqual(checkCidr("10.0.0.0/8"), { ok: true, value: { text: "10.0.0.0/8", family: 4, loopback: false } });
    assert.deepEqual(checkCidr("127.1.2.3/32"), { ok: true, value: { text: "127.1.2.3/32", family: 4, loopback: true } });
    assert.deepEqual(checkCidr("2001:0db8:0000::/32"), { ok: true, value: { text: "2001:db8::/32", family: 6, loopback: false } });
    assert.deepEqual(checkCidr("::1/128"), { ok: true, value: { text: "::1/128", family: 6, loopback: true } });
    assert.deepEqual(checkCidr("::ffff:10.1.2.3/128"), { ok: true, value: { text: "::ffff:10.1.2.3/128", family: 6, loopback: false } });
    // Istio parity: Go keeps an IPv4-compatible tail where it is (ipaddr.js would map it), and
    // unwraps a mapped address before asking whether it is loopback.
    assert.deepEqual(checkCidr("::1.2.3.4/128"), { ok: true, value: { text: "::102:304/128", family: 6, loopback: false } });
    assert.deepEqual(checkCidr("::ffff:127.0.0.1/128"), { ok: true, value: { text: "::ffff:127.0.0.1/128", family: 6, loopback: true } });
    for (const bad of ["10.0.0.1", "10.0.0.0/33", "10.0.0.0/08", "10.0.0.0/", "/8", "::/129", "fe80::%eth0/64", "*", "10.0.0.0/8 ", "10.0.0.0/-1"]) {
      assert.equal(checkCidr(bad).ok, false, `should reject ${JSON.stringify(bad)}`);
    }
  });
  test("lists split on commas, drop empty items, keep spaces (so they are refused later)", () => {
    assert.deepEqual(splitList("6000,7000,"), ["6000", "7000"]);
    assert.deepEqual(splitList(""), []);
    assert.deepEqual(splitList(",,"), []);
    assert.deepEqual(splitList("1, 2"), ["1", " 2"]);
  });
});
