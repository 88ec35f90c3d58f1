import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CaptureConfigError } from "../contract/capture-config.ts";
import { ANNOTATION, captureConfigFromPod, deriveCaptureInput, parseGoBool } from "./capture-from-pod.ts";
import { parsePod } from "./pod.ts";

function pod(options: { annotations?: Record<string, string>; env?: { name: string; value: string }[]; securityContext?: object; nativeSidecar?: boolean; ips?: string[] } = {}) {
  const proxy = { name: "istio-proxy", env: options.env ?? [], securityContext: options.securityContext ?? {}, ...(options.nativeSidecar === true ? { restartPolicy: "Always" } : {}) };
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
    const { input } = deriveCaptureInput(pod({ annotations: { [ANNOTATION.excludeInboundPorts]: "15021,9000," } }));
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
    const { input, sources } = deriveCaptureInput(pod({ env: [{ name: "ISTIO_META_DNS_CAPTURE", value: "True" }, { name: "INVALID_DROP", value: "1" }] }));
    assert.equal(input.redirectDNS, true);
    assert.equal(input.captureAllDNS, true);
    assert.equal(input.dropInvalid, true);
    assert.equal(sources.redirectDNS, "istio-proxy env ISTIO_META_DNS_CAPTURE");
    assert.equal(parseGoBool("yes"), undefined);
  });

  test("an unparsable env boolean is an error naming the variable", () => {
    assert.throws(() => deriveCaptureInput(pod({ env: [{ name: "INVALID_DROP", value: "yes" }] })), /istio-proxy env INVALID_DROP: "yes" is invalid/);
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

  test("an IPv6 pod address enables IPv6 rules", () => {
    assert.equal(deriveCaptureInput(pod({ ips: ["10.0.0.2", "fd00::2"] })).input.enableIPv6, true);
  });

  test("interception modes: TPROXY accepted, NONE and unknown refused with the annotation named", () => {
    assert.equal(captureConfigFromPod(pod({ annotations: { [ANNOTATION.interceptionMode]: "TPROXY" } })).tproxy, true);
    for (const mode of ["NONE", "tproxy", "REDIRECT "]) {
      assert.throws(() => deriveCaptureInput(pod({ annotations: { [ANNOTATION.interceptionMode]: mode } })), (err: unknown) => {
        assert.ok(err instanceof CaptureConfigError);
        assert.equal(err.issues[0]?.source, `annotation ${ANNOTATION.interceptionMode}`);
        return true;
      });
    }
  });

  test("bad annotation tokens are reported with the annotation as their source", () => {
    assert.throws(() => captureConfigFromPod(pod({ annotations: { [ANNOTATION.excludeInboundPorts]: "80,http" } })), (err: unknown) => {
      assert.ok(err instanceof CaptureConfigError);
      assert.deepEqual(err.issues.map((i) => [i.source, i.value]), [[`annotation ${ANNOTATION.excludeInboundPorts}`, "http"]]);
      return true;
    });
  });
});
