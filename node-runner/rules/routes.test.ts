import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DEFAULT_CAPTURE_CONFIG, parseCaptureConfig } from "../../contract/capture-config.ts";
import { ipCommand, netSetupSteps } from "./routes.ts";

const config = (overrides: object) => parseCaptureConfig({ ...DEFAULT_CAPTURE_CONFIG, ...overrides });

describe("network setup steps", () => {
  test("REDIRECT on IPv4 needs none", () => {
    assert.deepEqual(netSetupSteps(config({})), []);
  });
  test("IPv6 adds the ::6 passthrough address on lo", () => {
    assert.deepEqual(
      netSetupSteps(config({ enableIPv6: true })).map((s) => ipCommand(s, "add")),
      [["-6", "addr", "add", "::6/128", "dev", "lo"]],
    );
  });
  test("TPROXY routes marked packets to a local table, per family", () => {
    const steps = netSetupSteps(config({ inboundInterceptionMode: "TPROXY", enableIPv6: true, inboundTProxyMark: "1337", inboundTProxyRouteTable: "133" }));
    assert.deepEqual(
      steps.map((s) => ipCommand(s, "add").join(" ")),
      [
        "-6 addr add ::6/128 dev lo",
        "-4 rule add fwmark 1337 lookup 133",
        "-4 route add local default dev lo table 133",
        "-6 rule add fwmark 1337 lookup 133",
        "-6 route add local default dev lo table 133",
      ],
    );
    const rule = steps[1];
    assert.ok(rule !== undefined);
    assert.deepEqual(ipCommand(rule, "del"), ["-4", "rule", "del", "fwmark", "1337", "lookup", "133"]);
  });
  test("TPROXY with inbound capture off needs no routes", () => {
    assert.deepEqual(netSetupSteps(config({ inboundInterceptionMode: "TPROXY", inboundPortsInclude: "" })), []);
  });
});
