import assert from "node:assert/strict";
import { generateKeyPairSync, X509Certificate, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { generateTls } from "./tls.ts";
import { diagnose, doctorExitCode, formatFindings, unmatchedSigningKeys, type ClusterSnapshot } from "./doctor.ts";
import { KNATIVE_MODULE_MINOR_OFFSET, TESTED_VERSIONS } from "./tested-versions.ts";

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
  injectors: [{ name: "istio-sidecar-injector", hasTemplate: true, cniEnabled: false, waiterImage: "ghcr.io/podnet/waiter:0.1.0" }],
  istioCniAgents: [],
  tlsCertificate: generateTls().cert,
  signingKeys: true,
  publicKeys: true,
  unmatchedKeys: [],
  policyText: "mode: enforce\nnamespaces:\n  exclude: [kube-system]\n",
  runnerDaemonSet: {
    priorityClassName: "system-node-critical",
    priorityClassExists: true,
    image: "ghcr.io/podnet/node-runner:0.1.0",
    desired: 2,
    scheduled: 2,
  },
  priorityQuotas: [{ name: "podnet-node-critical", hard: 5000, used: 2 }],
  versions: {
    istio: [{ name: "istiod", version: "1.0.0" }],
    knative: [
      { component: "knative-serving", version: "devel" },
      { component: "knative-eventing", version: "1.23.1" },
    ],
  },
  waitingPods: [{ pod: "shop/new", waitingSeconds: 2 }],
  now,
};

const healthyDs = healthy.runnerDaemonSet ?? assert.fail("the healthy snapshot has a DaemonSet");
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
      [
        "a priority class that does not exist",
        { runnerDaemonSet: { ...healthyDs, priorityClassName: "mesh-critical", priorityClassExists: false } },
        /priority class mesh-critical does not exist/,
      ],
      [
        "runner pods refused (GKE without the quota)",
        {
          runnerDaemonSet: { ...healthyDs, scheduled: 0 },
          priorityQuotas: [],
          runnerCreateFailure: 'pods "podnet-node-runner-x" is forbidden: insufficient quota to match these scopes',
        },
        /made 0 of 2 runner pods: pods "podnet-node-runner-x" is forbidden: insufficient quota/,
      ],
      [
        "the quota used up",
        { priorityQuotas: [{ name: "podnet-node-critical", hard: 2, used: 2 }] },
        /quota podnet-node-critical for system-node-critical pods is used up \(2\/2\)/,
      ],
      ["a signing key the runners do not accept", { unmatchedKeys: ["fn-20261201"] }, /do not accept the function's key\(s\) fn-20261201/],
      [
        "a policy the function refuses",
        { policyText: "mode: sometimes\n" },
        /refuses the policy in podnet-policy and keeps the last good one: invalid policy: mode/,
      ],
      ["no policy", { policyText: undefined }, /no ConfigMap podnet-policy/],
      ["fail-open on", { policyText: "mode: fail-open\n" }, /incident switch is on \(mode fail-open\)/],
      ["dry-run", { policyText: "mode: dry-run\n" }, /mode dry-run: nothing is applied/],
      [
        "a waiter image that is not a reference",
        { injectors: [{ name: "istio-sidecar-injector", hasTemplate: true, cniEnabled: false, waiterImage: "ghcr.io/podnet/waiter:0.1.0 --pull" }] },
        /waiter image "ghcr.io\/podnet\/waiter:0.1.0 --pull" is not an image reference/,
      ],
      [
        "a waiter of another release than the runners",
        { injectors: [{ name: "istio-sidecar-injector", hasTemplate: true, cniEnabled: false, waiterImage: "registry.example:5000/podnet/waiter:0.0.9" }] },
        /waiter image registry.example:5000\/podnet\/waiter:0.0.9 is of another release than the node-runners' \(0.1.0\)/,
      ],
      [
        "an Istio release not tested",
        { versions: { istio: [{ name: "istiod-canary", version: "1.28.3" }], knative: [] } },
        /Istio 1.28.3 is not a tested release/,
      ],
      [
        "a Knative release not tested",
        { versions: { istio: [], knative: [{ component: "knative-serving", version: "1.22.0" }] } },
        /Knative 1.22.0 is not the tested release \(1.23\)/,
      ],
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

test("the function's signing keys the runners do not accept: a public key missing, or another key under the keyid", () => {
  const pair = () => generateKeyPairSync("ed25519");
  const [a, b, c] = [pair(), pair(), pair()];
  const pem = (k: KeyObject): string => k.export({ type: k.type === "private" ? "pkcs8" : "spki", format: "pem" }).toString();
  assert.deepEqual(
    unmatchedSigningKeys(
      { "fn-a.pem": pem(a.privateKey), "fn-b.pem": pem(b.privateKey), "fn-c.pem": pem(c.privateKey), "fn-d.pem": "not a key" },
      { "fn-a.pem": pem(a.publicKey), "fn-b.pem": pem(c.publicKey), "fn-old.pem": pem(b.publicKey) },
    ),
    ["fn-b", "fn-c", "fn-d"],
  );
});

test("the tested versions doctor compares with are those the tests run (the wrapper modules)", () => {
  const goMod = (dir: string): string => readFileSync(path.join(import.meta.dirname, "..", dir, "go.mod"), "utf8");
  const knative = goMod("test/controlplane/knative");
  const [major, minor] = TESTED_VERSIONS.knative.release.split(".").map(Number);
  const module = `v0.${String((minor ?? 0) + KNATIVE_MODULE_MINOR_OFFSET)}.`;
  assert.equal(major, 1);
  for (const m of ["knative.dev/serving", "knative.dev/eventing"]) assert.match(knative, new RegExp(`${m} ${module.replaceAll(".", "\\.")}`), m);
  // Istio: a main-branch pseudo-version of 2026-08-27 (no release can be fetched here).
  assert.match(goMod("test/istio-oracle"), /istio\.io\/istio v0\.0\.0-20260827\d{6}-[0-9a-f]{12}/);
  assert.deepEqual(TESTED_VERSIONS.istio.releases, []);
});
