// The Secret + ConfigMap pairs `pnc keys` writes (signing keys; node-runner TLS): one shape, the
// project's label, a comment line saying what each file is.
import { stringify } from "yaml";

export const LABELS = { "app.kubernetes.io/part-of": "podnet" };

export function secretAndConfigMap(
  namespace: string,
  secret: { readonly name: string; readonly type: string; readonly stringData: Record<string, string>; readonly comment: string },
  configMap: { readonly name: string; readonly data: Record<string, string>; readonly comment: string },
): { secret: string; configMap: string } {
  return {
    secret: `# ${secret.comment}\n${stringify({ apiVersion: "v1", kind: "Secret", metadata: { name: secret.name, namespace, labels: LABELS }, type: secret.type, stringData: secret.stringData })}`,
    configMap: `# ${configMap.comment}\n${stringify({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: configMap.name, namespace, labels: LABELS }, data: configMap.data })}`,
  };
}
