// `pnc keys renew`: the node-runners' certificate renewed before it expires, with no restart and
// no moment at which the function does not trust what a node-runner serves. The CA's private key
// is not kept (cli/tls.ts), so a renewal is a rotation to a new CA and certificate, one step per
// run (the chart runs it hourly as a CronJob), each step waiting until the kubelets have had time
// to update the mounts of the one before:
//
//   start  the new certificate is kept beside the current one in the TLS Secret (next.*), and the
//          CA ConfigMap the function trusts holds both CAs;
//   swap   the TLS Secret serves the new certificate (the node-runners reload it);
//   prune  the CA ConfigMap holds the new CA only.
//
// The plan is pure (the stored state and the time in, one step out); the API calls are at the edge.
import { X509Certificate } from "node:crypto";
import { parseArgs } from "node:util";
import { errorMessage } from "../lib/errors.ts";
import { apiStatusCode, CLUSTER_OPTIONS, CLUSTER_USAGE, ClusterConfigError, clusterErrorMessage, coreApi } from "./kube-client.ts";
import { decodedSecretData } from "./manifests.ts";
import { CA_CONFIGMAP_NAME, generateTls, TLS_SECRET_NAME, type TlsFiles } from "./tls.ts";

/** On the CA ConfigMap: when the last step was taken (ISO 8601). */
export const LAST_STEP_ANNOTATION = "podnet.github.io/tls-rotation-step-at";
/** The TLS Secret's entries for the certificate a rotation will serve next. */
export const NEXT = { cert: "next.crt", key: "next.key", ca: "next-ca.crt" } as const;

export interface StoredTls {
  /** The TLS Secret's entries (tls.crt, tls.key, ca.crt, and next.* during a rotation). */
  readonly secret: Readonly<Record<string, string>>;
  /** The CA ConfigMap's ca.crt: one certificate, or two during a rotation. */
  readonly trusted: string;
  readonly lastStepAt?: number | undefined;
}

export type RenewalStep =
  | { readonly kind: "none"; readonly detail: string }
  | { readonly kind: "wait"; readonly detail: string }
  | { readonly kind: "start"; readonly detail: string }
  | { readonly kind: "swap"; readonly detail: string }
  | { readonly kind: "prune"; readonly detail: string };

export interface RenewalTiming {
  readonly now: number;
  /** Start a rotation when the certificate expires within this long. */
  readonly renewBeforeMs: number;
  /** A step waits this long after the one before (the kubelets update mounts within about two minutes). */
  readonly stepAfterMs: number;
}

/** The certificates of a PEM bundle, each as its DER in base64 (comparable whatever the PEM's layout). */
export function bundleCertificates(pem: string): string[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]).raw.toString("base64"));
}

const iso = (ms: number): string => new Date(ms).toISOString();

/** The one step to take now. Throws when the stored objects are not what `pnc keys` makes. */
export function planRenewal(stored: StoredTls, t: RenewalTiming): RenewalStep {
  const { secret } = stored;
  const cert = secret["tls.crt"];
  const ca = secret["ca.crt"];
  if (cert === undefined || ca === undefined) throw new Error(`Secret ${TLS_SECRET_NAME} lacks tls.crt or ca.crt: it is not one pnc keys made`);
  const trusted = bundleCertificates(stored.trusted);
  const [currentCa] = bundleCertificates(ca);
  if (currentCa === undefined) throw new Error(`Secret ${TLS_SECRET_NAME}'s ca.crt holds no certificate`);
  const waited = stored.lastStepAt === undefined ? Infinity : t.now - stored.lastStepAt;
  const waitUntil = (what: string): RenewalStep => ({
    kind: "wait",
    detail: `${what} once the kubelets have updated the mounts: from ${iso((stored.lastStepAt ?? 0) + t.stepAfterMs)}`,
  });

  const nextCaPem = secret[NEXT.ca];
  const nextCa = nextCaPem === undefined ? undefined : bundleCertificates(nextCaPem)[0];
  if (nextCa !== undefined && secret[NEXT.cert] !== undefined && secret[NEXT.key] !== undefined) {
    if (!trusted.includes(nextCa)) return { kind: "start", detail: "the new CA is not trusted yet: the CA ConfigMap gets it beside the current one" };
    if (waited < t.stepAfterMs) return waitUntil("the node-runners serve the new certificate");
    return { kind: "swap", detail: "the node-runners serve the new certificate (the function trusts both CAs)" };
  }
  if (!trusted.includes(currentCa))
    return { kind: "prune", detail: "the CA ConfigMap lacks the CA of the certificate served: it gets that CA (at once: nothing trusts the node-runners now)" };
  if (trusted.length > 1) {
    if (waited < t.stepAfterMs) return waitUntil("the old CA leaves the CA ConfigMap");
    return { kind: "prune", detail: "the CA ConfigMap keeps only the CA of the certificate served" };
  }
  const notAfter = Date.parse(new X509Certificate(cert).validTo);
  if (notAfter - t.now <= t.renewBeforeMs)
    return { kind: "start", detail: `the certificate expires on ${iso(notAfter)}: a new CA and certificate, trusted first` };
  return { kind: "none", detail: `the certificate is valid until ${iso(notAfter)}; its renewal starts from ${iso(notAfter - t.renewBeforeMs)}` };
}

/** The Secret's and the ConfigMap's new contents for a step (`fresh` makes the new CA and certificate). */
export function applyStep(step: RenewalStep, stored: StoredTls, fresh: () => TlsFiles): { secret?: Record<string, string>; trusted?: string } | undefined {
  const secret = { ...stored.secret };
  const current = secret["ca.crt"] ?? "";
  switch (step.kind) {
    case "none":
    case "wait":
      return undefined;
    case "start": {
      if (secret[NEXT.cert] === undefined || secret[NEXT.key] === undefined || secret[NEXT.ca] === undefined) {
        const next = fresh();
        Object.assign(secret, { [NEXT.cert]: next.cert, [NEXT.key]: next.key, [NEXT.ca]: next.ca });
      }
      return { secret, trusted: `${current.trim()}\n${(secret[NEXT.ca] ?? "").trim()}\n` };
    }
    case "swap": {
      const next = { "tls.crt": secret[NEXT.cert] ?? "", "tls.key": secret[NEXT.key] ?? "", "ca.crt": secret[NEXT.ca] ?? "" };
      const { [NEXT.cert]: _c, [NEXT.key]: _k, [NEXT.ca]: _a, ...rest } = secret;
      return { secret: { ...rest, ...next } };
    }
    case "prune":
      return { trusted: `${current.trim()}\n` };
  }
}

/** "30d", "12h", "10m", "90s" → milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d{1,6})(d|h|m|s)$/.exec(text);
  if (m === null) throw new Error(`not a duration: ${JSON.stringify(text)} (e.g. 30d, 12h, 10m, 0s)`);
  return Number(m[1]) * { d: 86_400_000, h: 3_600_000, m: 60_000, s: 1000 }[m[2] as "d" | "h" | "m" | "s"];
}

/** `pnc keys renew [-n podnet-system] [--renew-before 30d] [--step-after 10m] [--kubeconfig <file>] [--context <name>]` */
export async function renewKeysMain(args: readonly string[], io: { stdout: (text: string) => void; stderr: (text: string) => void }): Promise<number> {
  const usage = `usage: pnc keys renew [-n podnet-system] [--renew-before 30d] [--step-after 10m] ${CLUSTER_USAGE}\n`;
  let timing: Omit<RenewalTiming, "now">;
  let values: { namespace: string; kubeconfig?: string | undefined; context?: string | undefined };
  try {
    const parsed = parseArgs({
      args: [...args],
      options: {
        namespace: { type: "string", short: "n", default: "podnet-system" },
        "renew-before": { type: "string", default: "30d" },
        "step-after": { type: "string", default: "10m" },
        ...CLUSTER_OPTIONS,
      },
    }).values;
    values = parsed;
    timing = { renewBeforeMs: parseDuration(parsed["renew-before"]), stepAfterMs: parseDuration(parsed["step-after"]) };
  } catch (err) {
    io.stderr(`pnc keys renew: ${errorMessage(err)}\n${usage}`);
    return 64;
  }
  const { namespace } = values;
  try {
    const core = await coreApi(values);
    const [secret, configMap] = await Promise.all([
      core.readNamespacedSecret({ namespace, name: TLS_SECRET_NAME }),
      core.readNamespacedConfigMap({ namespace, name: CA_CONFIGMAP_NAME }),
    ]);
    const decoded = decodedSecretData(secret.data);
    const stepAt = Date.parse(configMap.metadata?.annotations?.[LAST_STEP_ANNOTATION] ?? "");
    const stored: StoredTls = { secret: decoded, trusted: configMap.data?.["ca.crt"] ?? "", lastStepAt: Number.isNaN(stepAt) ? undefined : stepAt };
    const now = Date.now();
    const step = planRenewal(stored, { ...timing, now });
    const change = applyStep(step, stored, () => generateTls());
    if (change === undefined) {
      io.stdout(`pnc keys renew: ${step.kind === "none" ? "nothing to do" : "waiting"}: ${step.detail}\n`);
      return 0;
    }
    // Trust first, serve second: the ConfigMap is written before the Secret. Each write names the
    // resourceVersion it read, so a concurrent run or edit fails instead of being overwritten.
    if (change.trusted !== undefined) {
      await core.replaceNamespacedConfigMap({
        namespace,
        name: CA_CONFIGMAP_NAME,
        body: {
          ...configMap,
          metadata: { ...configMap.metadata, annotations: { ...configMap.metadata?.annotations, [LAST_STEP_ANNOTATION]: new Date(now).toISOString() } },
          data: { ...configMap.data, "ca.crt": change.trusted },
        },
      });
    }
    if (change.secret !== undefined) {
      await core.replaceNamespacedSecret({
        namespace,
        name: TLS_SECRET_NAME,
        body: { ...secret, data: Object.fromEntries(Object.entries(change.secret).map(([k, v]) => [k, Buffer.from(v).toString("base64")])) },
      });
      if (change.trusted === undefined) {
        const { PatchStrategy, setHeaderOptions } = await import("@kubernetes/client-node");
        await core.patchNamespacedConfigMap(
          { namespace, name: CA_CONFIGMAP_NAME, body: { metadata: { annotations: { [LAST_STEP_ANNOTATION]: new Date(now).toISOString() } } } },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
      }
    }
    io.stdout(`pnc keys renew: ${step.kind}: ${step.detail}\n`);
    return 0;
  } catch (err) {
    io.stderr(`pnc keys renew: ${clusterErrorMessage(err)}\n`);
    return err instanceof ClusterConfigError ? 64 : apiStatusCode(err) === undefined ? 1 : 3;
  }
}
