import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { describe, test } from "node:test";
import { generateTls } from "./tls.ts";
import { diagnose, doctorExitCode, formatFindings, type ClusterSnapshot } from "./doctor.ts";

// Pure checks on snapshots; the same against a live install: test/node/knative.test.ts.
const now = Date.parse("2026-12-06T12:00:00Z");
const ready = [{ type: "Ready", status: "True" }];
const healthy: ClusterSnapshot = {
  namespace: "podnet-system",
  nodes: ["n1", "n2"],
  runners: [
    { node: "n1", ready: true },
    { node: "n2", ready: true },
  ],
  functionService: { name: "podnet-decision", conditions: ready },
  sources: [
    { name: "podnet-pods", conditions: ready, sinkAudience: "serving.knative.dev/service/podnet-system/podnet-decision" },
    { name: "podnet-resync", conditions: ready, sinkAudience: "serving.knative.dev/service/podnet-system/podnet-decision" },
  ],
  oidcFeature: "enabled",
  injectors: [{ name: "istio-sidecar-injector", hasTemplate: true, cniEnabled: false }],
  istioCniAgents: [],
  tlsCertificate: generateTls().cert,
  signingKeys: true,
  publicKeys: true,
  waitingPods: [{ pod: "shop/new", waitingSeconds: 2 }],
  now,
};

const errorsOf = (s: ClusterSnapshot) => diagnose(s).filter((f) => f.severity !== "ok");

describe("pnc doctor: the checks", () => {
  test("a healthy install: every check ok, exit 0", () => {
    const findings = diagnose(healthy);
    assert.deepEqual(
      findings.filter((f) => f.severity !== "ok"),
      [],
    );
    assert.equal(doctorExitCode(findings), 0);
    assert.match(formatFindings(findings), /^OK\s+node-runners\s+Ready on all 2 schedulable node\(s\)$/m);
  });

  test("each fault is named with its fix", () => {
    const cases: [string, Partial<ClusterSnapshot>, RegExp][] = [
      [
        "a node without a Ready runner",
        {
          runners: [
            { node: "n1", ready: true },
            { node: "n2", ready: false },
          ],
        },
        /no Ready node-runner on 1 of 2 node\(s\): n2/,
      ],
      ["no signing key", { signingKeys: false }, /missing: Secret podnet-signing-keys/],
      ["no TLS Secret", { tlsCertificate: undefined }, /no Secret podnet-node-runner-tls/],
      ["a certificate that is not one", { tlsCertificate: "junk" }, /no readable certificate/],
      [
        "the function not Ready",
        { functionService: { name: "podnet-decision", conditions: [{ type: "Ready", status: "False", reason: "RevisionMissing" }] } },
        /not Ready: RevisionMissing/,
      ],
      ["no function", { functionService: undefined }, /no Knative Service podnet-decision/],
      ["a source without an audience", { sources: [{ name: "podnet-pods", conditions: ready }] }, /names no audience/],
      ["a source not Ready", { sources: [{ name: "podnet-pods", conditions: [], sinkAudience: "a" }] }, /podnet-pods[^]*not Ready: no Ready condition/],
      ["OIDC off", { oidcFeature: "disabled" }, /authentication-oidc is disabled/],
      [
        "an injector without the template",
        { injectors: [{ name: "istio-sidecar-injector-canary", hasTemplate: false, cniEnabled: false }] },
        /canary[^]*no podnet template/,
      ],
      ["no istiod", { injectors: [] }, /no istiod injector/],
      ["Istio's CNI agent", { istioCniAgents: ["kube-system/istio-cni-node"] }, /CNI agent runs \(kube-system\/istio-cni-node\)/],
    ];
    for (const [what, change, message] of cases) {
      const found = errorsOf({ ...healthy, ...change });
      assert.ok(found.length > 0 && found.every((f) => f.fix !== ""), what);
      assert.match(found.map((f) => `${f.check} ${f.detail}`).join("\n"), message, what);
      assert.equal(doctorExitCode(diagnose({ ...healthy, ...change })), found.some((f) => f.severity === "error") ? 2 : 1, what);
    }
  });

  test("warnings: CNI mode on, a certificate within 30 days, a pod waiting over a minute with its reason", () => {
    const found = errorsOf({
      ...healthy,
      injectors: [{ name: "istio-sidecar-injector", hasTemplate: true, cniEnabled: true }],
      waitingPods: [{ pod: "shop/stuck", waitingSeconds: 95, lastWarning: "NetworkInitFailed: node-runner unavailable" }],
    });
    assert.deepEqual(
      found.map((f) => [f.severity, f.check]),
      [
        ["warning", "istio istio-sidecar-injector"],
        ["warning", "waiting pods"],
      ],
    );
    assert.match(found[1]?.detail ?? "", /shop\/stuck \(95 s, mark none; NetworkInitFailed: node-runner unavailable\)/);
    const cert = generateTls().cert;
    const expiry = Date.parse(new X509Certificate(cert).validTo);
    const near = errorsOf({ ...healthy, tlsCertificate: cert, now: expiry - 10 * 86_400_000 });
    assert.deepEqual(
      near.map((f) => [f.severity, f.check]),
      [["warning", "certificate"]],
    );
    const past = errorsOf({ ...healthy, tlsCertificate: cert, now: expiry + 86_400_000 });
    assert.deepEqual(
      past.map((f) => [f.severity, f.check]),
      [["error", "certificate"]],
    );
  });
});
