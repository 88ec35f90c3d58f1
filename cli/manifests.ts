// The Secret + ConfigMap pairs `pnc keys` writes (signing keys; node-runner TLS) and `pnc keys
// ensure` creates: one shape, the project's label; the files get a comment line saying what each is.
import { stringify } from "yaml";

const LABELS = { "app.kubernetes.io/part-of": "podnet" };

/** A Secret (its entries as stringData) or a ConfigMap (as data) holding keys. */
export interface KeyHolder {
  readonly kind: "Secret" | "ConfigMap";
  readonly name: string;
  readonly type?: string;
  readonly entries: Readonly<Record<string, string>>;
}

/** The object as the API server takes it (a Secret's shape and a ConfigMap's, one of them filled). */
export interface KeyManifest {
  readonly apiVersion: "v1";
  readonly kind: KeyHolder["kind"];
  readonly metadata: { readonly name: string; readonly namespace: string; readonly labels: Record<string, string> };
  readonly type?: string;
  readonly stringData?: Record<string, string>;
  readonly data?: Record<string, string>;
}

export function keyManifest(namespace: string, o: KeyHolder): KeyManifest {
  return {
    apiVersion: "v1",
    kind: o.kind,
    metadata: { name: o.name, namespace, labels: LABELS },
    ...(o.kind === "Secret" ? { ...(o.type === undefined ? {} : { type: o.type }), stringData: { ...o.entries } } : { data: { ...o.entries } }),
  };
}

export function secretAndConfigMap(
  namespace: string,
  secret: { readonly name: string; readonly type: string; readonly stringData: Record<string, string>; readonly comment: string },
  configMap: { readonly name: string; readonly data: Record<string, string>; readonly comment: string },
): { secret: string; configMap: string } {
  return {
    secret: `# ${secret.comment}\n${stringify(keyManifest(namespace, { kind: "Secret", name: secret.name, type: secret.type, entries: secret.stringData }))}`,
    configMap: `# ${configMap.comment}\n${stringify(keyManifest(namespace, { kind: "ConfigMap", name: configMap.name, entries: configMap.data }))}`,
  };
}

/** A Secret's `data` as text: each value base64-decoded (as the API server and Secret manifests hold them). */
export function decodedSecretData(data: Readonly<Record<string, string>> | undefined): Record<string, string> {
  return Object.fromEntries(Object.entries(data ?? {}).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")]));
}
