import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CaptureConfigError, formatWarning } from "../contract/capture-config.ts";
import { renderIptables } from "../node-runner/rules/iptables.ts";
import { renderNftables } from "../node-runner/rules/nftables.ts";
import { captureConfigFromPod } from "../test/support/capture.ts";
import { ANNOTATION, deriveCaptureInput, LIST_ANNOTATIONS, parseGoBool } from "./capture-from-pod.ts";
import { parsePod } from "./pod.ts";

function pod(
  options: {
    annotations?: Record<string, string>;
    env?: { name: string; value?: string; valueFrom?: object }[];
    securityContext?: object;
    nativeSidecar?: boolean;
    ips?: string[];
  } = {},
) {
  const proxy = {
    name: "istio-proxy",
    env: options.env ?? [],
    securityContext: options.securityContext ?? {},
    ...(options.nativeSidecar === true ? { restartPolicy: "Always" } : {}),
  };
  return parsePod({
    metadata: { name: "p", namespace: "n", annotations: { "sidecar.istio.io/status": "{}", ...options.annotations } },
    spec: options.nativeSidecar === true ? { initContainers: [proxy], containers: [{ name: "app" }] } : { containers: [{ name: "app" }, proxy] },
    status: { podIPs: (options.ips ?? ["10.0.0.2"]).map((ip) => ({ ip })) },
  });
}

describe("pod → capture config (istio-cni rules)", () => {
  test("defaults", () => {
    const { input, sources } = deriveCaptureInput(pod());
    assert.equal(input.inboundInterceptionMode, "REDIRECT");
    assert.equal(input.outboundIPRangesInclude, "*");
    assert.equal(input.inboundPortsInclude, "*");
    assert.equal(input.inboundPortsExclude, "15020,15021,15090");
    assert.equal(input.outboundPortsExclude, "15020");
    assert.equal(input.proxyUID, "1337");
    assert.equal(input.proxyGID, "1337");
    assert.equal(input.enableIPv6, false);
    assert.deepEqual(sources, {});
  });

  test("excludeInboundPorts: agent ports appended, exact duplicates dropped", () => {
    const { input } = deriveCaptureInput(pod({ annotations: { [ANNOTATION.excludeInboundPorts]: "15021,9000" } }));
    assert.equal(input.inboundPortsExclude, "15021,9000,15020,15090");
  });

  test("excludeOutboundPorts annotation replaces the default", () => {
    assert.equal(deriveCaptureInput(pod({ annotations: { [ANNOTATION.excludeOutboundPorts]: "5555" } })).input.outboundPortsExclude, "5555");
  });

  test("reroute-virtual-interfaces wins over the legacy kubevirtInterfaces annotation", () => {
    assert.equal(deriveCaptureInput(pod({ annotations: { [ANNOTATION.kubevirtInterfaces]: "net1" } })).input.rerouteVirtualInterfaces, "net1");
    const both = deriveCaptureInput(pod({ annotations: { [ANNOTATION.kubevirtInterfaces]: "net1", [ANNOTATION.rerouteVirtualInterfaces]: "net2" } }));
    assert.equal(both.input.rerouteVirtualInterfaces, "net2");
    assert.equal(both.sources.rerouteVirtualInterfaces, `annotation ${ANNOTATION.rerouteVirtualInterfaces}`);
  });

  test("proxy env: DNS capture turns on redirect and capture-all; Go booleans", () => {
    const { input, sources } = deriveCaptureInput(
      pod({
        env: [
          { name: "ISTIO_META_DNS_CAPTURE", value: "True" },
          { name: "INVALID_DROP", value: "1" },
        ],
      }),
    );
    assert.equal(input.redirectDNS, true);
    assert.equal(input.captureAllDNS, true);
    assert.equal(input.dropInvalid, true);
    assert.equal(sources.redirectDNS, "istio-proxy env ISTIO_META_DNS_CAPTURE");
    assert.equal(parseGoBool("yes"), undefined);
  });

  // Istio parity (issue 11, case 5): strconv.ParseBool failure is logged and read as false.
  test("parity: a non-boolean proxy env flag (yes, empty, valueFrom) is false with a warning naming the variable", () => {
    for (const entry of [
      { name: "INVALID_DROP", value: "yes" },
      { name: "ISTIO_META_DNS_CAPTURE", value: "" },
      { name: "ISTIO_DUAL_STACK", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
    ]) {
      const derived = deriveCaptureInput(pod({ env: [entry], ips: ["10.0.0.2", "fd00::2"] }));
      assert.equal(derived.input.dropInvalid, false);
      assert.equal(derived.input.redirectDNS, false);
      assert.equal(derived.input.enableIPv6, false);
      assert.equal(derived.warnings.length, 1);
      assert.equal(derived.warnings[0]?.source, `istio-proxy env ${entry.name}`);
      assert.match(derived.warnings.map(formatWarning).join(), new RegExp(`istio-proxy env ${entry.name}: .* treated as false`));
    }
  });

  test("runAsUser/runAsGroup set the proxy identity; 0 means the default", () => {
    const { input } = deriveCaptureInput(pod({ securityContext: { runAsUser: 1000670000, runAsGroup: 0 } }));
    assert.equal(input.proxyUID, "1000670000");
    assert.equal(input.proxyGID, "1337");
  });

  test("a negative runAsUser is refused naming the securityContext field", () => {
    assert.throws(() => captureConfigFromPod(pod({ securityContext: { runAsUser: -1 } })), /istio-proxy securityContext\.runAsUser: "-1" is invalid/);
  });

  test("the proxy as a native sidecar (init container) is found", () => {
    assert.equal(deriveCaptureInput(pod({ nativeSidecar: true, env: [{ name: "INVALID_DROP", value: "true" }] })).input.dropInvalid, true);
  });

  // Istio parity (issue 11, case 1): IPv6 rules for IPv6-only pods, or dual-stack with ISTIO_DUAL_STACK.
  test("parity: IPv6 rules for an IPv6-only pod, and for a dual-stack pod only with ISTIO_DUAL_STACK=true", () => {
    assert.equal(deriveCaptureInput(pod({ ips: ["fd00::2"] })).input.enableIPv6, true);
    assert.equal(deriveCaptureInput(pod({ ips: ["10.0.0.2", "fd00::2"] })).input.enableIPv6, false);
    assert.equal(deriveCaptureInput(pod({ ips: ["fd00::2", "10.0.0.2"] })).input.enableIPv6, false);
    assert.equal(deriveCaptureInput(pod({ ips: ["10.0.0.2", "fd00::2"], env: [{ name: "ISTIO_DUAL_STACK", value: "true" }] })).input.enableIPv6, true);
    assert.equal(deriveCaptureInput(pod({ ips: ["10.0.0.2"], env: [{ name: "ISTIO_DUAL_STACK", value: "true" }] })).input.enableIPv6, false);
    const plan = renderIptables(captureConfigFromPod(pod({ ips: ["10.0.0.2", "fd00::2"] })));
    assert.equal(plan.v6, null);
    assert.doesNotMatch(renderNftables(captureConfigFromPod(pod({ ips: ["10.0.0.2", "fd00::2"] }))).script, /ip6 /);
  });

  // Istio parity (issue 11, case 3): istio-cni refuses a list with an empty item.
  test("parity: an empty item in any list annotation is refused, naming the annotation", () => {
    const keys = LIST_ANNOTATIONS.map((a) => a.key);
    const lists = { ports: ["80,", ",80", "80,,90", ","], ranges: ["10.0.0.0/8,", ",10.0.0.0/8", ","], ifaces: ["eth1,", ",eth1", ","] };
    for (const key of keys) {
      const values = key.includes("Ports") ? lists.ports : key.includes("IPRanges") ? lists.ranges : lists.ifaces;
      for (const value of values) {
        assert.throws(
          () => captureConfigFromPod(pod({ annotations: { [key]: value } })),
          (err: unknown) => {
            assert.ok(err instanceof CaptureConfigError, `${key}=${value}`);
            assert.equal(err.issues[0]?.source, `annotation ${key}`);
            assert.match(err.message, /empty item/);
            return true;
          },
        );
      }
    }
    // An empty value is not a list with an empty item.
    assert.equal(deriveCaptureInput(pod({ annotations: { [ANNOTATION.excludeOutboundPorts]: "" } })).input.outboundPortsExclude, "");
  });

  // Istio parity (issue 11, case 4): interface names start with a letter.
  test("parity: an interface name starting with a digit is refused", () => {
    for (const value of ["0eth", "1"]) {
      assert.throws(
        () => captureConfigFromPod(pod({ annotations: { [ANNOTATION.excludeInterfaces]: value } })),
        /excludeInterfaces: .* must start with a letter/,
      );
    }
  });

  // Istio parity (issue 11, case 2): Go unwraps ::ffff:127.0.0.1 before its loopback test.
  test("parity: an IPv4-mapped loopback include range drops the lo owner RETURN lines", () => {
    const plan = renderIptables(captureConfigFromPod(pod({ ips: ["fd00::2"], annotations: { [ANNOTATION.includeOutboundIPRanges]: "::ffff:127.0.0.1/128" } })));
    assert.ok(plan.v6 !== null);
    for (const family of [plan.v4, plan.v6]) assert.doesNotMatch(family.restore, /-o lo -m owner ! --(uid|gid)-owner/);
  });

  test("interception modes: TPROXY accepted, NONE and unknown refused with the annotation named", () => {
    assert.equal(captureConfigFromPod(pod({ annotations: { [ANNOTATION.interceptionMode]: "TPROXY" } })).tproxy, true);
    for (const mode of ["NONE", "tproxy", "REDIRECT "]) {
      assert.throws(
        () => captureConfigFromPod(pod({ annotations: { [ANNOTATION.interceptionMode]: mode } })),
        (err: unknown) => {
          assert.ok(err instanceof CaptureConfigError);
          assert.equal(err.issues[0]?.source, `annotation ${ANNOTATION.interceptionMode}`);
          return true;
        },
      );
    }
  });

  test("bad annotation tokens are reported with the annotation as their source", () => {
    assert.throws(
      () => captureConfigFromPod(pod({ annotations: { [ANNOTATION.excludeInboundPorts]: "80,http" } })),
      (err: unknown) => {
        assert.ok(err instanceof CaptureConfigError);
        assert.deepEqual(
          err.issues.map((i) => [i.source, i.value]),
          [[`annotation ${ANNOTATION.excludeInboundPorts}`, "http"]],
        );
        return true;
      },
    );
  });
});
