// TLS material read from a mounted Secret or ConfigMap and followed as the kubelet updates it (a
// renewal, a CA rotation: `pnc keys renew`), so that neither component restarts for it. A file
// that does not parse, or a certificate without its key, is refused and what was loaded stays.
import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import type { Logger } from "pino";
import { errorMessage } from "./errors.ts";
import { watchMount } from "./watch-mount.ts";

export interface ServingTls {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** The certificate's expiry, in Unix seconds. */
  readonly notAfter: number;
}

/** A serving certificate and its key; throws, saying which file and why, when they are not a pair. */
export function readServingTls(certFile: string, keyFile: string): ServingTls {
  const cert = readFileSync(certFile);
  const key = readFileSync(keyFile);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new Error(`${certFile}: not a PEM certificate: ${errorMessage(err)}`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new Error(`${keyFile}: not a PEM private key: ${errorMessage(err)}`);
  }
  if (!x509.checkPrivateKey(privateKey)) throw new Error(`${keyFile} is not the key of the certificate in ${certFile}`);
  return { cert, key, notAfter: Date.parse(x509.validTo) / 1000 };
}

/**
 * Call `onChange` with the files' contents whenever one of them changes (their directories are
 * watched, and polled every `pollMs` where file events are not delivered). Unreadable files are
 * logged and skipped until they are readable again. Returns a function that stops following.
 */
export function followFiles(files: readonly string[], onChange: (contents: Buffer[]) => void, options: { pollMs: number; log: Logger }): () => void {
  let last: Buffer[] = files.map((f) => readFileSync(f));
  const check = (): void => {
    let now: Buffer[];
    try {
      now = files.map((f) => readFileSync(f));
    } catch (err) {
      options.log.warn({ err: errorMessage(err), files }, "cannot read the mounted files now; keeping what is loaded");
      return;
    }
    if (now.every((content, i) => last[i]?.equals(content) === true)) return;
    last = now;
    onChange(now);
  };
  const stops = [...new Set(files.map((f) => path.dirname(f)))].map((dir) => watchMount(dir, check, options));
  return () => {
    for (const stop of stops) stop();
  };
}
