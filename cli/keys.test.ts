import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { describe, test } from "node:test";
import { parse } from "yaml";
import { generateKeys, KeyManifestError, newKeyId, rotateKeys } from "./keys.ts";

const secretData = (text: string) => (parse(text) as { stringData: Record<string, string> }).stringData;
const configData = (text: string) => (parse(text) as { data: Record<string, string> }).data;

describe("pnc keys", () => {
  test("generate: a working Ed25519 pair, private in a Secret, public in a ConfigMap", () => {
    const k = generateKeys("podnet-system", new Date("2026-11-25T10:00:00Z"));
    assert.equal(k.keyid, "fn-20261125100000");
    const priv = createPrivateKey(secretData(k.secret)["fn-20261125100000.pem"] ?? "");
    const pub = createPublicKey(configData(k.configMap)["fn-20261125100000.pem"] ?? "");
    const signature = sign(null, Buffer.from("x"), priv);
    assert.ok(verify(null, Buffer.from("x"), pub, signature));
    assert.doesNotMatch(k.configMap, /PRIVATE/);
  });

  test("rotate: adds a newer pair and keeps the old one valid", () => {
    const first = generateKeys("podnet-system", new Date("2026-11-25T10:00:00Z"));
    const second = rotateKeys(first.secret, first.configMap, new Date("2026-12-25T10:00:00Z"));
    assert.deepEqual(Object.keys(configData(second.configMap)).sort(), ["fn-20261125100000.pem", "fn-20261225100000.pem"]);
    assert.deepEqual(Object.keys(secretData(second.secret)).sort().pop(), "fn-20261225100000.pem", "the newest sorts last and signs");
    assert.throws(() => rotateKeys(second.secret, second.configMap, new Date("2026-12-25T10:00:00Z")), KeyManifestError);
    assert.throws(() => rotateKeys("kind: ConfigMap", first.configMap), KeyManifestError);
  });

  test("key ids sort by time", () => {
    assert.ok(newKeyId(new Date("2026-01-02T00:00:00Z")) < newKeyId(new Date("2026-10-01T00:00:00Z")));
  });
});
