// `pnc keys generate` and `pnc keys rotate`: Ed25519 signing keys as Kubernetes manifests — a
// Secret with the private keys for the decision function, a ConfigMap with the public keys for
// the node-runners. Key ids are fn-<UTC timestamp>, so the newest sorts last and signs.
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import { parseAllDocuments } from "yaml";
import { decodedSecretData, secretAndConfigMap } from "./manifests.ts";

export const SECRET_NAME = "podnet-signing-keys";
export const CONFIGMAP_NAME = "podnet-public-keys";

export interface KeyManifests {
  readonly secret: string;
  readonly configMap: string;
  readonly keyid: string;
}

export function newKeyId(now: Date): string {
  return `fn-${now.toISOString().replace(/[-:T]/g, "").slice(0, 14)}`;
}

export function pair(): { privatePem: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return {
    privatePem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    publicPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
  };
}

function manifests(namespace: string, privateKeys: Record<string, string>, publicKeys: Record<string, string>): { secret: string; configMap: string } {
  return secretAndConfigMap(
    namespace,
    { name: SECRET_NAME, type: "Opaque", stringData: privateKeys, comment: "Private signing keys of the decision function. Keep out of version control." },
    { name: CONFIGMAP_NAME, data: publicKeys, comment: "Public keys the node-runners accept (several during a rotation)." },
  );
}

export function generateKeys(namespace: string, now = new Date()): KeyManifests {
  const keyid = newKeyId(now);
  const { privatePem, publicPem } = pair();
  return { keyid, ...manifests(namespace, { [`${keyid}.pem`]: privatePem }, { [`${keyid}.pem`]: publicPem }) };
}

export class KeyManifestError extends Error {}

/** The public key of a private key PEM (both PEM). */
export function publicPemOf(privatePem: string): string {
  return createPublicKey(privatePem).export({ type: "spki", format: "pem" }).toString();
}

function readMap(text: string, kind: "Secret" | "ConfigMap"): { namespace: string; entries: Record<string, string> } {
  // An empty stream is an empty array: "no <kind>".
  const doc = parseAllDocuments(text)
    .map((d) => d.toJS() as unknown)
    .find((d) => typeof d === "object" && d !== null && (d as { kind?: unknown }).kind === kind) as
    { metadata?: { namespace?: string }; stringData?: Record<string, string>; data?: Record<string, string> } | undefined;
  if (doc === undefined) throw new KeyManifestError(`no ${kind} in the given file`);
  const entries = kind === "Secret" ? { ...(doc.stringData ?? {}), ...decodedSecretData(doc.data) } : (doc.data ?? {});
  return { namespace: doc.metadata?.namespace ?? "podnet-system", entries };
}

/** Add a new pair; existing keys stay (the old public key stays valid until you remove it). */
export function rotateKeys(secretText: string, configMapText: string, now = new Date()): KeyManifests {
  const secret = readMap(secretText, "Secret");
  const publicKeys = readMap(configMapText, "ConfigMap");
  const keyid = newKeyId(now);
  if (`${keyid}.pem` in secret.entries) throw new KeyManifestError(`a key ${keyid} already exists`);
  const { privatePem, publicPem } = pair();
  return {
    keyid,
    ...manifests(secret.namespace, { ...secret.entries, [`${keyid}.pem`]: privatePem }, { ...publicKeys.entries, [`${keyid}.pem`]: publicPem }),
  };
}
