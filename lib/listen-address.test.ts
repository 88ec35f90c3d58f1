import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { formatHostPort, parseListenAddress, resolveListenAddress } from "./listen-address.ts";

const fallback = { host: "0.0.0.0", port: 19443 };

describe("listen addresses", () => {
  test("host:port and [v6]:port", () => {
    assert.deepEqual(parseListenAddress("0.0.0.0:19090"), { host: "0.0.0.0", port: 19090 });
    assert.deepEqual(parseListenAddress("[fd00::1]:19090"), { host: "fd00::1", port: 19090 });
    assert.deepEqual(parseListenAddress(":9095"), { host: "", port: 9095 });
    for (const bad of ["fd00::1:19090", "host", "a:0", "a:65536", "[x]:1", "a:b:1", "a:1x", "a:+1", "a:1e3"])
      assert.equal(parseListenAddress(bad), undefined, bad);
  });

  test("a port alone listens on the node's IP, IPv4 or IPv6 (the DaemonSet's HOST_IP)", () => {
    assert.deepEqual(resolveListenAddress({ port: "19443", hostIPs: ["10.0.0.5"], fallback }), { host: "10.0.0.5", port: 19443 });
    const v6 = resolveListenAddress({ port: "19443", hostIPs: ["fd00:10::5"], fallback });
    assert.deepEqual(v6, { host: "fd00:10::5", port: 19443 });
    assert.equal(formatHostPort("fd00:10::5", 19443), "[fd00:10::5]:19443");
    assert.deepEqual(resolveListenAddress({ address: "[::1]:1", port: "2", hostIPs: [], fallback }), { host: "::1", port: 1 }, "an address wins");
    assert.deepEqual(resolveListenAddress({ hostIPs: [], fallback }), fallback);
    assert.ok("error" in resolveListenAddress({ port: "19443", hostIPs: [], fallback }));
    assert.ok("error" in resolveListenAddress({ port: "0", hostIPs: ["10.0.0.5"], fallback }));
    assert.ok(
      "error" in resolveListenAddress({ address: "fd00::1:19443", hostIPs: [], fallback }),
      "the old DaemonSet's unbracketed IPv6 is refused, not misread",
    );
  });

  test("property: any text is an address with a port in range, or a clear error; a formatted address parses back", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 64 }), fc.string({ maxLength: 8 }), (address, port) => {
        for (const r of [resolveListenAddress({ address, hostIPs: [], fallback }), resolveListenAddress({ port, hostIPs: ["10.0.0.1"], fallback })]) {
          assert.ok("error" in r ? r.error.length < 200 : Number.isInteger(r.port) && r.port >= 1 && r.port <= 65535);
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 1, max: 65535 }), (host, port) => {
        assert.deepEqual(parseListenAddress(formatHostPort(host, port)), { host, port });
      }),
    );
  });
});
