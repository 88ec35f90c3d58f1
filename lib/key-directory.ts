// Ed25519 keys by keyid from a mounted directory (a Secret or ConfigMap: one PEM file per key,
// the file name without extension is the keyid), re-read when it changes. The node-runner
// loads the function's public keys (several may be valid at once: rotation); the function
// loads its private keys and signs with the newest.
import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { watchMount } from "./watch-mount.ts";
import { errorMessage } from "./errors.ts";

export class KeyDirectory {
  private keys = new Map<string, KeyObject>();
  private unwatch: (() => void) | undefined;

  constructor(
    private readonly dir: string,
    private readonly kind: "public" | "private",
    private readonly log: Logger,
  ) {}

  get current(): ReadonlyMap<string, KeyObject> {
    return this.keys;
  }

  /** Load now; then reload on change (with a periodic re-read: mounted Secrets swap symlinks). */
  async start(pollMs = 30_000): Promise<void> {
    await this.reload();
    this.unwatch = watchMount(this.dir, () => void this.reload(), { pollMs, log: this.log });
  }

  stop(): void {
    this.unwatch?.();
  }

  async reload(): Promise<void> {
    const next = new Map<string, KeyObject>();
    let entries: string[];
    try {
      entries = await readdir(this.dir);
    } catch (err) {
      this.log.error({ err, dir: this.dir }, `cannot read the ${this.kind} key directory; keeping the keys loaded before`);
      return;
    }
    for (const entry of entries) {
      if (entry.startsWith(".")) continue; // Kubernetes' ..data bookkeeping
      const keyid = entry.replace(/\.(pem|pub|key)$/, "");
      try {
        const pem = await readFile(path.join(this.dir, entry));
        const key = this.kind === "public" ? createPublicKey(pem) : createPrivateKey(pem);
        if (key.asymmetricKeyType !== "ed25519") throw new Error(`key type ${key.asymmetricKeyType ?? "?"}, expected ed25519`);
        next.set(keyid, key);
      } catch (err) {
        this.log.warn({ keyid, err: errorMessage(err) }, `ignoring an unusable ${this.kind} key file`);
      }
    }
    const changed = [...next.keys()].sort().join(",") !== [...this.keys.keys()].sort().join(",");
    this.keys = next;
    if (changed) this.log.info({ keyids: [...next.keys()] }, `${this.kind} keys loaded`);
  }

  /** The newest key: key ids sort by age (pnc keys names them <prefix>-<UTC timestamp>). */
  newest(): { keyid: string; key: KeyObject } | undefined {
    const keyid = [...this.keys.keys()].sort().pop();
    const key = keyid === undefined ? undefined : this.keys.get(keyid);
    return keyid === undefined || key === undefined ? undefined : { keyid, key };
  }
}
