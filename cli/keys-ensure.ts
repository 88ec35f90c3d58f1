// `pnc keys ensure`: the chart's key generation (keys.generate=true). A Helm hook Job runs it in
// the cluster, so no private key passes through Helm (whose release record keeps every rendered
// manifest) and an upgrade never replaces a key: it creates what is missing and keeps what is
// there. The plan is pure (what exists in, what to create out); the API calls are at the edge.
import { parseArgs } from "node:util";
import { errorMessage } from "../lib/errors.ts";
import type { CoreV1Api } from "@kubernetes/client-node";
import { apiStatusCode, CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, coreApi, ifFound } from "./kube-client.ts";
import { CONFIGMAP_NAME, KeyManifestError, newKeyId, pair, publicPemOf, SECRET_NAME } from "./keys.ts";
import { decodedSecretData, keyManifest, type KeyHolder } from "./manifests.ts";
import { CA_CONFIGMAP_NAME, generateTls, TLS_SECRET_NAME, tlsSecretData, type TlsFiles } from "./tls.ts";

/** What the namespace holds: each object's entries (Secret data decoded), absent when missing. */
export interface StoredKeys {
  readonly signingSecret?: Readonly<Record<string, string>>;
  readonly publicKeys?: Readonly<Record<string, string>>;
  readonly tlsSecret?: Readonly<Record<string, string>>;
  readonly caConfigMap?: Readonly<Record<string, string>>;
}

export interface KeyGenerators {
  readonly signing: () => { keyid: string; privatePem: string; publicPem: string };
  readonly tls: () => TlsFiles;
}

export const defaultGenerators: KeyGenerators = {
  signing: () => ({ keyid: newKeyId(new Date()), ...pair() }),
  tls: () => generateTls(),
};

/**
 * The objects to create, Secrets first: a run cut short after a Secret is completed by the next
 * (the public keys are derived from the private ones, the CA ConfigMap from the TLS Secret's
 * ca.crt). Public halves without their private halves are refused: an operator's keys are
 * never replaced.
 */
export function planMissingKeys(stored: StoredKeys, generate: KeyGenerators, options: { tls?: boolean } = {}): KeyHolder[] {
  const secrets: KeyHolder[] = [];
  const configMaps: KeyHolder[] = [];
  const refuse = (configMap: string, secret: string): never => {
    throw new KeyManifestError(
      `ConfigMap ${configMap} exists but Secret ${secret} does not: public keys without their private keys. Apply the Secret, or delete the ConfigMap to have a new pair made.`,
    );
  };

  if (stored.signingSecret === undefined) {
    if (stored.publicKeys !== undefined) refuse(CONFIGMAP_NAME, SECRET_NAME);
    const { keyid, privatePem, publicPem } = generate.signing();
    secrets.push({ kind: "Secret", name: SECRET_NAME, type: "Opaque", entries: { [`${keyid}.pem`]: privatePem } });
    configMaps.push({ kind: "ConfigMap", name: CONFIGMAP_NAME, entries: { [`${keyid}.pem`]: publicPem } });
  } else if (stored.publicKeys === undefined) {
    const pems = Object.entries(stored.signingSecret).filter(([name]) => name.endsWith(".pem"));
    if (pems.length === 0) throw new KeyManifestError(`Secret ${SECRET_NAME} holds no <keyid>.pem private key`);
    configMaps.push({ kind: "ConfigMap", name: CONFIGMAP_NAME, entries: Object.fromEntries(pems.map(([name, pem]) => [name, publicPemOf(pem)])) });
  }

  // Without TLS: cert-manager makes the serving certificate (the chart's tls.certManager).
  if (options.tls === false) return [...secrets, ...configMaps];
  if (stored.tlsSecret === undefined) {
    if (stored.caConfigMap !== undefined) refuse(CA_CONFIGMAP_NAME, TLS_SECRET_NAME);
    const tls = generate.tls();
    secrets.push({ kind: "Secret", name: TLS_SECRET_NAME, type: "kubernetes.io/tls", entries: tlsSecretData(tls) });
    configMaps.push({ kind: "ConfigMap", name: CA_CONFIGMAP_NAME, entries: { "ca.crt": tls.ca } });
  } else if (stored.caConfigMap === undefined) {
    const ca = stored.tlsSecret["ca.crt"];
    if (ca === undefined)
      throw new KeyManifestError(
        `Secret ${TLS_SECRET_NAME} has no ca.crt to remake ConfigMap ${CA_CONFIGMAP_NAME} from: apply the CA ConfigMap, or delete the Secret to have new TLS made`,
      );
    configMaps.push({ kind: "ConfigMap", name: CA_CONFIGMAP_NAME, entries: { "ca.crt": ca } });
  }
  return [...secrets, ...configMaps];
}

async function readStored(core: CoreV1Api, namespace: string): Promise<StoredKeys> {
  const [signingSecret, publicKeys, tlsSecret, caConfigMap] = await Promise.all([
    ifFound(core.readNamespacedSecret({ namespace, name: SECRET_NAME })).then((o) => o && decodedSecretData(o.data)),
    ifFound(core.readNamespacedConfigMap({ namespace, name: CONFIGMAP_NAME })).then((o) => o && (o.data ?? {})),
    ifFound(core.readNamespacedSecret({ namespace, name: TLS_SECRET_NAME })).then((o) => o && decodedSecretData(o.data)),
    ifFound(core.readNamespacedConfigMap({ namespace, name: CA_CONFIGMAP_NAME })).then((o) => o && (o.data ?? {})),
  ]);
  return { ...(signingSecret && { signingSecret }), ...(publicKeys && { publicKeys }), ...(tlsSecret && { tlsSecret }), ...(caConfigMap && { caConfigMap }) };
}

/** Create what is missing; returns one line per object. A concurrent run (409) is re-read once. */
export async function ensureKeys(
  core: CoreV1Api,
  namespace: string,
  generate: KeyGenerators = defaultGenerators,
  options: { tls?: boolean } = {},
): Promise<string[]> {
  const created = new Set<string>();
  const lines: string[] = [];
  for (let attempt = 1; ; attempt++) {
    const plan = planMissingKeys(await readStored(core, namespace), generate, options);
    try {
      for (const o of plan) {
        const body = keyManifest(namespace, o);
        await (o.kind === "Secret" ? core.createNamespacedSecret({ namespace, body }) : core.createNamespacedConfigMap({ namespace, body }));
        created.add(o.name);
        lines.push(`created ${o.kind} ${namespace}/${o.name}`);
      }
    } catch (err) {
      if (apiStatusCode(err) === 409 && attempt === 1) continue;
      throw err;
    }
    for (const name of [SECRET_NAME, CONFIGMAP_NAME, ...(options.tls === false ? [] : [TLS_SECRET_NAME, CA_CONFIGMAP_NAME])])
      if (!created.has(name)) lines.push(`kept ${namespace}/${name}`);
    return lines;
  }
}

/** `pnc keys ensure [--namespace podnet-system] [--no-tls] [--kubeconfig <file>] [--context <name>]` (in a pod: its ServiceAccount). */
export async function ensureKeysMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  let values: { namespace: string; "no-tls": boolean; kubeconfig?: string | undefined; context?: string | undefined };
  try {
    values = parseArgs({
      args: [...args],
      options: { namespace: { type: "string", default: "podnet-system" }, "no-tls": { type: "boolean", default: false }, ...CLUSTER_OPTIONS },
    }).values;
  } catch (err) {
    io.stderr(`pnc keys ensure: ${errorMessage(err)}\nusage: pnc keys ensure [--namespace podnet-system] [--no-tls] ${CLUSTER_USAGE}\n`);
    return 64;
  }
  try {
    for (const line of await ensureKeys(await coreApi(values), values.namespace, defaultGenerators, { tls: !values["no-tls"] }))
      io.stdout(`pnc keys ensure: ${line}\n`);
    return 0;
  } catch (err) {
    io.stderr(`pnc keys ensure: ${clusterErrorMessage(err)}; nothing replaced\n`);
    return err instanceof KeyManifestError ? 3 : err instanceof ClusterConfigError ? 64 : 1;
  }
}
