import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { KeyManifestError, pair } from "./keys.ts";
import { planMissingKeys, type KeyGenerators } from "./keys-ensure.ts";

// Pure planning; the same against the real API server with the chart's RBAC: test/helm.
const signing = pair();
const generators: KeyGenerators = {
  signing: () => ({ keyid: "fn-20261126000000", ...signing }),
  tls: () => ({ ca: "CA", cert: "CERT", key: "KEY" }),
};
const names = (plan: ReturnType<typeof planMissingKeys>) => plan.map((o) => `${o.kind}/${o.name}`);

describe("pnc keys ensure: what to create", () => {
  test("nothing there: all four, Secrets first", () => {
    const plan = planMissingKeys({}, generators);
    assert.deepEqual(names(plan), [
      "Secret/podnet-signing-keys",
      "Secret/podnet-node-runner-tls",
      "ConfigMap/podnet-public-keys",
      "ConfigMap/podnet-node-runner-ca",
    ]);
    assert.deepEqual(plan[1]?.entries, { "tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA" });
    assert.equal(plan[2]?.entries["fn-20261126000000.pem"], signing.publicPem);
  });

  test("everything there: nothing, and nothing generated", () => {
    const never: KeyGenerators = { signing: () => assert.fail("generated"), tls: () => assert.fail("generated") };
    assert.deepEqual(
      planMissingKeys({ signingSecret: { "a.pem": "x" }, publicKeys: { "a.pem": "y" }, tlsSecret: { "ca.crt": "c" }, caConfigMap: { "ca.crt": "c" } }, never),
      [],
    );
  });

  test("a run cut short after the Secrets: the ConfigMaps are remade from them, not new keys", () => {
    const plan = planMissingKeys(
      { signingSecret: { "fn-1.pem": signing.privatePem, README: "not a key" }, tlsSecret: { "tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "OLDCA" } },
      generators,
    );
    assert.deepEqual(names(plan), ["ConfigMap/podnet-public-keys", "ConfigMap/podnet-node-runner-ca"]);
    assert.deepEqual(plan[0]?.entries, { "fn-1.pem": signing.publicPem });
    assert.deepEqual(plan[1]?.entries, { "ca.crt": "OLDCA" });
  });

  test("public halves without private halves, or no way to remake them, are refused", () => {
    for (const stored of [
      { publicKeys: { "a.pem": "y" } },
      { tlsSecret: { "tls.crt": "c", "tls.key": "k" } },
      { signingSecret: { other: "x" } },
      { caConfigMap: { "ca.crt": "c" }, signingSecret: { "a.pem": signing.privatePem }, publicKeys: {} },
    ]) {
      assert.throws(() => planMissingKeys(stored, generators), KeyManifestError, JSON.stringify(stored));
    }
  });
});
