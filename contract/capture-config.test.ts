import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { CaptureConfigError, DEFAULT_CAPTURE_CONFIG, parseCaptureConfig, type CaptureConfigInput, type CaptureField } from "./capture-config.ts";

const withField = (field: CaptureField, value: unknown): unknown => ({ ...DEFAULT_CAPTURE_CONFIG, [field]: value });

function issuesOf(input: unknown, sources = {}): CaptureConfigError["issues"] {
  try {
    parseCaptureConfig(input, sources);
  } catch (err) {
    assert.ok(err instanceof CaptureConfigError, `unexpected ${String(err)}`);
    return err.issues;
  }
  assert.fail("expected a CaptureConfigError");
}

describe("parseCaptureConfig", () => {
  test("accepts Istio's defaults", () => {
    const c = parseCaptureConfig(DEFAULT_CAPTURE_CONFIG);
    assert.equal(c.inboundPortsInclude, "*");
    assert.equal(c.outboundIPRangesInclude, "*");
    assert.deepEqual(c.proxyUID, ["1337"]);
    assert.equal(c.tproxy, false);
  });

  const rejected: [CaptureField, unknown, unknown][] = [
    ["proxyPort", "abc", "abc"],
    ["inboundCapturePort", "65536", "65536"],
    ["inboundPortsInclude", "80,x", "x"],
    ["inboundPortsExclude", "-1", "-1"],
    ["outboundPortsExclude", "53 ", "53 "],
    ["outboundIPRangesInclude", "10.0.0.1", "10.0.0.1"],
    ["outboundIPRangesInclude", "10.0.0.0/8,*", "*"],
    ["outboundIPRangesExclude", "*", "*"],
    ["outboundIPRangesExclude", "300.0.0.0/8", "300.0.0.0/8"],
    ["excludeInterfaces", "eth0 -j ACCEPT", "eth0 -j ACCEPT"],
    ["rerouteVirtualInterfaces", "eth+", "eth+"],
    ["proxyUID", "-5", "-5"],
    ["proxyGID", "root", "root"],
    ["ownerGroupsInclude", "java;rm -rf", "java;rm -rf"],
    ["inboundTProxyMark", "0x539", "0x539"],
    ["inboundTProxyRouteTable", "254", "254"],
    ["inboundInterceptionMode", "NONE", "NONE"],
    ["hostIPv4LoopbackCidr", "::1/128", "::1/128"],
    ["dnsServersV4", ["8.8.8.8", "8.8.8.8/32"], "8.8.8.8/32"],
    ["dnsServersV6", ["fe80::1%eth0"], "fe80::1%eth0"],
  ];
  for (const [field, value, offending] of rejected) {
    test(`rejects ${field}=${JSON.stringify(value)} naming the field and the value`, () => {
      const issues = issuesOf(withField(field, value));
      assert.deepEqual(
        issues.map((i) => [i.field, i.value]),
        [[field, offending]],
      );
    });
  }

  test("reports every problem at once, each with its source", () => {
    const input = { ...DEFAULT_CAPTURE_CONFIG, excludeInterfaces: "e\n0", outboundPortsExclude: "1,99999" };
    const issues = issuesOf(input, { excludeInterfaces: "annotation traffic.sidecar.istio.io/excludeInterfaces" });
    assert.deepEqual(
      issues.map((i) => [i.field, i.source, i.value]),
      [
        ["outboundPortsExclude", undefined, "99999"],
        ["excludeInterfaces", "annotation traffic.sidecar.istio.io/excludeInterfaces", "e\n0"],
      ],
    );
    assert.match(new CaptureConfigError(issues).message, /annotation traffic\.sidecar\.istio\.io\/excludeInterfaces: "e\\n0" is invalid/);
  });

  test("rejects wrong shapes: unknown fields, missing fields, wrong types", () => {
    assert.equal(issuesOf({ ...DEFAULT_CAPTURE_CONFIG, extra: "x" })[0]?.field, "(capture)");
    const missing: Partial<CaptureConfigInput> = { ...DEFAULT_CAPTURE_CONFIG };
    delete missing.proxyPort;
    assert.equal(issuesOf(missing)[0]?.field, "proxyPort");
    assert.equal(issuesOf(withField("redirectDNS", "true"))[0]?.field, "redirectDNS");
    assert.equal(issuesOf(withField("dnsServersV4", "8.8.8.8"))[0]?.field, "dnsServersV4");
    assert.equal(issuesOf(null).length, 1);
    assert.equal(issuesOf("not an object").length, 1);
  });

  test("rejects oversize lists and fields", () => {
    const ports = Array.from({ length: 300 }, (_, i) => String(i + 1)).join(",");
    assert.equal(issuesOf(withField("outboundPortsExclude", ports))[0]?.field, "outboundPortsExclude");
    assert.equal(issuesOf(withField("excludeInterfaces", "e".repeat(5000)))[0]?.field, "excludeInterfaces");
  });

  test("property: any string in any string field is accepted or rejected with a CaptureConfigError", () => {
    const stringFields = (Object.keys(DEFAULT_CAPTURE_CONFIG) as CaptureField[]).filter((f) => typeof DEFAULT_CAPTURE_CONFIG[f] === "string");
    fc.assert(
      fc.property(fc.constantFrom(...stringFields), fc.string({ unit: "binary", maxLength: 80 }), (field, value) => {
        const input = { ...DEFAULT_CAPTURE_CONFIG, [field]: value };
        try {
          parseCaptureConfig(input);
        } catch (err) {
          if (!(err instanceof CaptureConfigError)) throw err;
          assert.ok(err.issues.every((i) => i.field === field));
        }
      }),
      { numRuns: 2000 },
    );
  });
});
