// The node-runners' TLS: a private CA and one serving certificate for the name every
// node-runner answers as (NODE_RUNNER_SERVER_NAME), made with openssl. The function connects to
// a node's IP and checks the certificate against that name and this CA (its ConfigMap); the
// RFC 9421 signature already gives integrity and authenticity, TLS adds confidentiality. The CA's
// private key is not kept: rotate by generating again.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { NODE_RUNNER_SERVER_NAME } from "../contract/apply-request.ts";
import { secretAndConfigMap } from "./manifests.ts";

export const TLS_SECRET_NAME = "podnet-node-runner-tls";
export const CA_CONFIGMAP_NAME = "podnet-node-runner-ca";

export interface TlsFiles {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

/** A CA and a serving certificate (ECDSA P-256) for NODE_RUNNER_SERVER_NAME. Needs `openssl`. */
export function generateTls(options: { days?: number } = {}): TlsFiles {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnc-tls-"));
  const file = (name: string): string => path.join(dir, name);
  const openssl = (args: string[]): void => {
    execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  };
  try {
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(["req", "-x509", ...ec, "-keyout", file("ca.key"), "-out", file("ca.crt"), "-days", "3650", "-subj", "/CN=podnet node-runner CA"]);
    openssl(["req", ...ec, "-keyout", file("tls.key"), "-out", file("tls.csr"), "-subj", `/CN=${NODE_RUNNER_SERVER_NAME}`]);
    writeFileSync(file("ext.cnf"), `subjectAltName=DNS:${NODE_RUNNER_SERVER_NAME}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n`);
    openssl([
      "x509",
      "-req",
      "-in",
      file("tls.csr"),
      "-CA",
      file("ca.crt"),
      "-CAkey",
      file("ca.key"),
      "-CAcreateserial",
      "-out",
      file("tls.crt"),
      "-days",
      String(options.days ?? 825),
      "-extfile",
      file("ext.cnf"),
    ]);
    return { ca: readFileSync(file("ca.crt"), "utf8"), cert: readFileSync(file("tls.crt"), "utf8"), key: readFileSync(file("tls.key"), "utf8") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The TLS Secret's entries; its CA certificate too, so that a lost CA ConfigMap can be remade. */
export function tlsSecretData(tls: TlsFiles): Record<string, string> {
  return { "tls.crt": tls.cert, "tls.key": tls.key, "ca.crt": tls.ca };
}

/** The Secret the node-runners serve with, and the CA ConfigMap the function trusts. */
export function tlsManifests(namespace: string, tls: TlsFiles): { secret: string; configMap: string } {
  return secretAndConfigMap(
    namespace,
    {
      name: TLS_SECRET_NAME,
      type: "kubernetes.io/tls",
      stringData: tlsSecretData(tls),
      comment: "The node-runners' serving certificate and key. Keep out of version control.",
    },
    { name: CA_CONFIGMAP_NAME, data: { "ca.crt": tls.ca }, comment: "The CA the decision function trusts for the node-runners' certificate." },
  );
}
