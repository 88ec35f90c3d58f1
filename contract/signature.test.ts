import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign } from "node:crypto";
import { describe, test } from "node:test";
import fc from "fast-check";
import { contentDigest, signatureBase, signatureParamsValue, signRequest, verifyRequest, type SignedMessage } from "./signature.ts";

// RFC 9421 Appendix B.1.4 test key and B.2.6 example.
const RFC_PRIVATE = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
const RFC_PUBLIC = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
const RFC_SIGNATURE = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";

describe("RFC 9421 Ed25519 test vector (B.2.6)", () => {
  const message: SignedMessage = {
    method: "POST",
    authority: "example.com",
    path: "/foo",
    headers: { date: "Tue, 20 Apr 2021 02:07:55 GMT", "content-type": "application/json", "content-length": "18" },
  };
  const components = ["date", "@method", "@path", "@authority", "content-type", "content-length"];
  const params = signatureParamsValue(components, { created: 1618884473, keyid: "test-key-ed25519" });

  test("signature base matches the RFC", () => {
    assert.equal(
      signatureBase(message, components, params),
      [
        '"date": Tue, 20 Apr 2021 02:07:55 GMT',
        '"@method": POST',
        '"@path": /foo',
        '"@authority": example.com',
        '"content-type": application/json',
        '"content-length": 18',
        '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"',
      ].join("\n"),
    );
  });

  test("signing with the RFC key gives the RFC signature (Ed25519 is deterministic)", () => {
    const signature = sign(null, Buffer.from(signatureBase(message, components, params)), createPrivateKey(RFC_PRIVATE));
    assert.equal(signature.toString("base64"), RFC_SIGNATURE);
  });

  test("RFC 9530: sha-256 content digest", () => {
    // RFC 9530 §2 example body {"hello": "world"}
    assert.equal(contentDigest(Buffer.from('{"hello": "world"}\n')), "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:");
  });
});

describe("podnet signature profile", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const keys = new Map([["fn-2026-11", publicKey]]);
  const now = Date.UTC(2026, 10, 25, 12, 0, 0);
  const body = Buffer.from('{"apiVersion":"podnet/v1","kind":"ApplyRequest"}');
  const nonce = "n0nce-0123456789abcdef";

  function signed(overrides: Partial<{ method: string; authority: string; path: string; contentType: string; body: Buffer }> = {}) {
    const request = { method: "POST", authority: "10.0.0.3:9443", path: "/v1/apply", contentType: "application/json", body, ...overrides };
    const headers = signRequest(request, { keyid: "fn-2026-11", privateKey }, { now, nonce });
    return { request, headers };
  }
  const asMessage = (r: ReturnType<typeof signed>["request"], headers: Record<string, string>): SignedMessage => ({
    method: r.method,
    authority: r.authority,
    path: r.path,
    headers: { "content-type": r.contentType, ...headers },
  });

  test("round trip verifies and returns keyid, nonce and validity", () => {
    const { request, headers } = signed();
    assert.deepEqual(verifyRequest(asMessage(request, headers), body, keys, now + 2000), {
      ok: true,
      keyid: "fn-2026-11",
      nonce,
      created: now / 1000,
      expires: now / 1000 + 30,
    });
  });

  const tamperings: [string, (m: SignedMessage) => SignedMessage, Buffer, string][] = [
    ["@method", (m) => ({ ...m, method: "PUT" }), body, "bad-signature"],
    ["@authority", (m) => ({ ...m, authority: "10.0.0.4:9443" }), body, "bad-signature"],
    ["@path", (m) => ({ ...m, path: "/v1/skip" }), body, "bad-signature"],
    ["content-type", (m) => ({ ...m, headers: { ...m.headers, "content-type": "text/plain" } }), body, "bad-signature"],
    [
      "content-digest (header replaced to match a new body)",
      (m) => ({ ...m, headers: { ...m.headers, "content-digest": contentDigest(Buffer.from("{}")) } }),
      Buffer.from("{}"),
      "bad-signature",
    ],
    ["body (digest no longer matches)", (m) => m, Buffer.from('{"apiVersion":"podnet/v1","kind":"ApplyRequest!"}'), "digest-mismatch"],
  ];
  for (const [what, tamper, tamperedBody, reason] of tamperings) {
    test(`altering ${what} fails (${reason})`, () => {
      const { request, headers } = signed();
      const result = verifyRequest(tamper(asMessage(request, headers)), tamperedBody, keys, now);
      assert.equal(result.ok ? "verified" : result.reason, reason);
    });
  }

  const failures: [string, (h: Record<string, string>) => Record<string, string>, string][] = [
    ["no headers", () => ({}), "missing-signature"],
    ["another label", (h) => ({ ...h, "signature-input": h["signature-input"]?.replace("podnet=", "other=") ?? "" }), "missing-signature"],
    ["garbage Signature-Input", (h) => ({ ...h, "signature-input": "podnet=((" }), "malformed-signature"],
    ["Signature not a byte sequence", (h) => ({ ...h, signature: 'podnet="abc"' }), "malformed-signature"],
    ["fewer components", (h) => ({ ...h, "signature-input": h["signature-input"]?.replace(' "content-digest"', "") ?? "" }), "profile-mismatch"],
    ["another tag", (h) => ({ ...h, "signature-input": h["signature-input"]?.replace("podnet-apply-v1", "other") ?? "" }), "profile-mismatch"],
    ["another alg", (h) => ({ ...h, "signature-input": h["signature-input"]?.replace('alg="ed25519"', 'alg="rsa-pss-sha512"') ?? "" }), "profile-mismatch"],
    ["unknown keyid", (h) => ({ ...h, "signature-input": h["signature-input"]?.replace("fn-2026-11", "stolen") ?? "" }), "unknown-key"],
  ];
  for (const [what, change, reason] of failures) {
    test(`${what} → ${reason}`, () => {
      const { request, headers } = signed();
      const result = verifyRequest(asMessage(request, change(headers)), body, keys, now);
      assert.equal(!result.ok && result.reason, reason);
    });
  }

  test("a key that is not the signer's does not verify (rotation: several keys by keyid)", () => {
    const other = generateKeyPairSync("ed25519").publicKey;
    const { request, headers } = signed();
    const result = verifyRequest(
      asMessage(request, headers),
      body,
      new Map([
        ["fn-2026-11", other],
        ["fn-2026-10", publicKey],
      ]),
      now,
    );
    assert.equal(!result.ok && result.reason, "bad-signature");
    assert.equal(
      verifyRequest(
        asMessage(request, headers),
        body,
        new Map([
          ["fn-2026-10", other],
          ["fn-2026-11", publicKey],
        ]),
        now,
      ).ok,
      true,
    );
  });

  test("freshness: expired and future-dated signatures fail, small skew is allowed", () => {
    const { request, headers } = signed();
    const m = asMessage(request, headers);
    assert.equal(verifyRequest(m, body, keys, now + 34_000).ok, true, "within expires + skew");
    const late = verifyRequest(m, body, keys, now + 36_000);
    assert.equal(!late.ok && late.reason, "expired");
    assert.equal(verifyRequest(m, body, keys, now - 4_000).ok, true, "signer clock slightly ahead");
    const early = verifyRequest(m, body, keys, now - 6_000);
    assert.equal(!early.ok && early.reason, "not-yet-valid");
  });

  test("the RFC's public key is not accepted for our requests (different tag, components)", () => {
    const { request, headers } = signed();
    const result = verifyRequest(asMessage(request, headers), body, new Map([["fn-2026-11", createPublicKey(RFC_PUBLIC)]]), now);
    assert.equal(!result.ok && result.reason, "bad-signature");
  });

  test("property: arbitrary signature headers never throw, and never verify", () => {
    const { request } = signed();
    fc.assert(
      fc.property(
        fc.string({ unit: "binary", maxLength: 200 }),
        fc.string({ unit: "binary", maxLength: 200 }),
        fc.string({ maxLength: 80 }),
        (input, sig, digest) => {
          const m = asMessage(request, { "signature-input": input, signature: sig, "content-digest": digest });
          assert.equal(verifyRequest(m, body, keys, now).ok, false);
        },
      ),
      { numRuns: 3000 },
    );
  });
});
