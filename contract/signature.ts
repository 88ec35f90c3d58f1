// The signature profile of apply requests (docs/architecture.md §6): RFC 9421 HTTP Message Signatures with
// Ed25519, covering the method, authority, path, content type and an RFC 9530 content digest,
// with created/expires/nonce/keyid/alg and a fixed tag. The decision function signs with a
// private key; node-runners hold only public keys, so no node can forge requests to another.
//
// Pure apart from node:crypto: time and nonce are passed in, the replay cache lives in the
// node-runner.
import { createHash, sign as edSign, timingSafeEqual, verify as edVerify, type KeyObject } from "node:crypto";
import { isInnerList, parseDictionary, serializeInnerList, type BareItem, type InnerList, type Item, type Parameters } from "structured-headers";
import { errorMessage } from "../lib/errors.ts";

export const SIGNATURE_PROFILE = {
  /** Dictionary key of our signature in Signature-Input / Signature. */
  label: "podnet",
  /** Fixed application tag: a signature made for something else never verifies here. */
  tag: "podnet-apply-v1",
  alg: "ed25519",
  components: ["@method", "@authority", "@path", "content-type", "content-digest"],
  /** expires − created, as signed. */
  validitySeconds: 30,
  /** The longest validity a verifier accepts (a signer cannot mint long-lived requests). */
  maxValiditySeconds: 60,
  /** Allowed clock difference between signer and verifier. */
  clockSkewSeconds: 5,
} as const;

/** What the signature covers of an HTTP request. Header names are lower case. */
export interface SignedMessage {
  readonly method: string;
  readonly authority: string;
  readonly path: string;
  readonly headers: Readonly<Record<string, string | readonly string[] | undefined>>;
}

export interface SignatureParameters {
  readonly created?: number;
  readonly expires?: number;
  readonly nonce?: string;
  readonly keyid?: string;
  readonly alg?: string;
  readonly tag?: string;
}

export class SignatureBaseError extends Error {
  override name = "SignatureBaseError";
}

function componentValue(message: SignedMessage, component: string): string {
  switch (component) {
    case "@method":
      return message.method.toUpperCase();
    case "@authority":
      return message.authority.toLowerCase();
    case "@path":
      return message.path;
    default: {
      if (component.startsWith("@")) throw new SignatureBaseError(`unsupported derived component ${component}`);
      const value = message.headers[component];
      if (value === undefined) throw new SignatureBaseError(`covered header ${component} is missing`);
      // Multiple field lines combine with ", "; surrounding whitespace is not part of the value.
      return (typeof value === "string" ? [value] : value).map((v) => v.trim()).join(", ");
    }
  }
}

/** The `@signature-params` value: the covered components as an inner list with parameters. */
export function signatureParamsValue(components: readonly string[], params: SignatureParameters): string {
  const parameters: Parameters = new Map();
  // Parameter order is the signer's choice and is part of what is signed; this is ours.
  for (const key of ["created", "expires", "nonce", "keyid", "alg", "tag"] as const) {
    const v = params[key];
    if (v !== undefined) parameters.set(key, v);
  }
  const items: Item[] = components.map((c): Item => [c, new Map<string, BareItem>()]);
  return serializeInnerList([items, parameters]);
}

/** RFC 9421 §2.5 signature base. */
export function signatureBase(message: SignedMessage, components: readonly string[], paramsValue: string): string {
  const lines = components.map((c) => `${JSON.stringify(c)}: ${componentValue(message, c)}`);
  lines.push(`"@signature-params": ${paramsValue}`);
  return lines.join("\n");
}

/** RFC 9530 Content-Digest with sha-256. */
export function contentDigest(body: Uint8Array): string {
  return `sha-256=:${createHash("sha256").update(body).digest("base64")}:`;
}

export interface SigningKey {
  readonly keyid: string;
  readonly privateKey: KeyObject;
}

/** Headers to add to a request: Content-Digest, Signature-Input, Signature. */
export function signRequest(
  request: { method: string; authority: string; path: string; contentType: string; body: Uint8Array },
  key: SigningKey,
  options: { now: number; nonce: string },
): Record<"content-digest" | "signature-input" | "signature", string> {
  const digest = contentDigest(request.body);
  const created = Math.floor(options.now / 1000);
  const paramsValue = signatureParamsValue(SIGNATURE_PROFILE.components, {
    created,
    expires: created + SIGNATURE_PROFILE.validitySeconds,
    nonce: options.nonce,
    keyid: key.keyid,
    alg: SIGNATURE_PROFILE.alg,
    tag: SIGNATURE_PROFILE.tag,
  });
  const message: SignedMessage = {
    method: request.method,
    authority: request.authority,
    path: request.path,
    headers: { "content-type": request.contentType, "content-digest": digest },
  };
  const signature = edSign(null, Buffer.from(signatureBase(message, SIGNATURE_PROFILE.components, paramsValue)), key.privateKey);
  return {
    "content-digest": digest,
    "signature-input": `${SIGNATURE_PROFILE.label}=${paramsValue}`,
    signature: `${SIGNATURE_PROFILE.label}=:${signature.toString("base64")}:`,
  };
}

export type VerifyFailureReason =
  "missing-signature" | "malformed-signature" | "profile-mismatch" | "digest-mismatch" | "unknown-key" | "bad-signature" | "expired" | "not-yet-valid";

export type VerifyResult =
  | { readonly ok: true; readonly keyid: string; readonly nonce: string; readonly created: number; readonly expires: number }
  | { readonly ok: false; readonly reason: VerifyFailureReason; readonly detail: string };

const fail = (reason: VerifyFailureReason, detail: string): VerifyResult => ({ ok: false, reason, detail });

function single(value: string | readonly string[] | undefined): string | undefined {
  return typeof value === "string" ? value : value?.join(", ");
}

/**
 * Verify a request against the profile, in the order of docs/architecture.md §6: signature (by
 * keyid), freshness, then the body's digest. Replay (nonce) is checked by the caller, which owns
 * the cache.
 */
export function verifyRequest(message: SignedMessage, body: Uint8Array, publicKeys: ReadonlyMap<string, KeyObject>, nowMs: number): VerifyResult {
  const signed = verifySignature(message, publicKeys, nowMs);
  return signed.ok ? (verifyDigest(message, body) ?? signed) : signed;
}

/**
 * The body's RFC 9530 digest against the signed Content-Digest header: undefined when it
 * matches. Checked after `verifySignature`, once the body has been read.
 */
export function verifyDigest(message: SignedMessage, body: Uint8Array): Extract<VerifyResult, { ok: false }> | undefined {
  const declaredDigest = single(message.headers["content-digest"]);
  if (declaredDigest === undefined || !safeEqual(declaredDigest, contentDigest(body))) {
    return { ok: false, reason: "digest-mismatch", detail: "Content-Digest does not match the body" };
  }
  return undefined;
}

/**
 * Everything but the body: the signature covers the Content-Digest header, not the body, so a
 * receiver checks who signed (and that it is fresh) before it reads a byte of the body.
 */
export function verifySignature(message: SignedMessage, publicKeys: ReadonlyMap<string, KeyObject>, nowMs: number): VerifyResult {
  const inputHeader = single(message.headers["signature-input"]);
  const signatureHeader = single(message.headers.signature);
  if (inputHeader === undefined || signatureHeader === undefined) {
    return fail("missing-signature", "Signature-Input and Signature headers are required");
  }
  let inputMember: Item | InnerList;
  let signatureMember: Item | InnerList;
  try {
    const inputs = parseDictionary(inputHeader);
    const signatures = parseDictionary(signatureHeader);
    const i = inputs.get(SIGNATURE_PROFILE.label);
    const s = signatures.get(SIGNATURE_PROFILE.label);
    if (i === undefined || s === undefined) return fail("missing-signature", `no signature labelled ${SIGNATURE_PROFILE.label}`);
    inputMember = i;
    signatureMember = s;
  } catch (err) {
    return fail("malformed-signature", errorMessage(err));
  }
  if (!isInnerList(inputMember)) return fail("malformed-signature", "Signature-Input member is not an inner list");
  const [items, params] = inputMember;
  const components = items.map(([value]) => value);
  if (
    items.some(([, p]) => p.size > 0) ||
    components.length !== SIGNATURE_PROFILE.components.length ||
    components.some((c, idx) => c !== SIGNATURE_PROFILE.components[idx])
  ) {
    return fail("profile-mismatch", `covered components must be ${SIGNATURE_PROFILE.components.join(" ")}`);
  }
  const created = params.get("created");
  const expires = params.get("expires");
  const nonce = params.get("nonce");
  const keyid = params.get("keyid");
  if (
    typeof created !== "number" ||
    !Number.isInteger(created) ||
    typeof expires !== "number" ||
    !Number.isInteger(expires) ||
    typeof nonce !== "string" ||
    nonce.length < 16 ||
    nonce.length > 128 ||
    typeof keyid !== "string" ||
    keyid === "" ||
    params.get("alg") !== SIGNATURE_PROFILE.alg ||
    params.get("tag") !== SIGNATURE_PROFILE.tag ||
    params.size !== 6
  ) {
    return fail("profile-mismatch", "parameters must be created, expires, nonce, keyid, alg=ed25519 and the podnet tag");
  }
  const [signatureBytes] = signatureMember;
  if (!(signatureBytes instanceof ArrayBuffer)) return fail("malformed-signature", "Signature member is not a byte sequence");

  const key = publicKeys.get(keyid);
  if (key === undefined) return fail("unknown-key", `no public key with keyid ${JSON.stringify(keyid)}`);
  let base: string;
  try {
    base = signatureBase(message, components as string[], serializeInnerList(inputMember));
  } catch (err) {
    return fail("malformed-signature", errorMessage(err));
  }
  if (!edVerify(null, Buffer.from(base), key, Buffer.from(signatureBytes))) {
    return fail("bad-signature", "the signature does not verify");
  }

  const now = Math.floor(nowMs / 1000);
  const skew = SIGNATURE_PROFILE.clockSkewSeconds;
  if (created > now + skew) return fail("not-yet-valid", `created ${created} is in the future (now ${now})`);
  if (expires < created || expires - created > SIGNATURE_PROFILE.maxValiditySeconds) {
    return fail("profile-mismatch", `validity ${expires - created} s is outside 0–${SIGNATURE_PROFILE.maxValiditySeconds} s`);
  }
  if (nowMs > acceptedUntilMs(expires)) return fail("expired", `expired at ${expires} (now ${now})`);
  return { ok: true, keyid, nonce, created, expires };
}

/**
 * The last millisecond at which a signature expiring at `expires` (seconds) passes the
 * freshness check. The replay cache keeps a nonce exactly this long: one clock arithmetic for
 * both, so no request can pass freshness after its nonce has been forgotten.
 */
export function acceptedUntilMs(expires: number): number {
  return (expires + SIGNATURE_PROFILE.clockSkewSeconds + 1) * 1000 - 1;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
