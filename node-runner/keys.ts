// Public keys of the decision function, by keyid, from a mounted directory (a Secret or
// ConfigMap: one PEM file per key, the file name without extension is the keyid). Several keys
// may be valid at once (rotation); the directory is re-read when it changes.
import { createPublicKey, type KeyObject } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";

export class PublicKeyDirectory {
  private keys = new Map<string, KeyObject>();
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
  ) {}

  get current(): ReadonlyMap<string, KeyObject> {
    return this.keys;
  }

  /** Load now; then reload on change (with a periodic re-read: mounted Secrets swap symlinks). */
  async start(pollMs = 30_000): Promise<void> {
    await this.reload();
    try {
      this.watcher = watch(this.dir, () => void this.reload());
    } catch (err) {
      this.log.warn({ err, dir: this.dir }, "cannot watch the key directory; polling only");
    }
    this.timer = setInterval(() => void this.reload(), pollMs);
    this.timer.unref();
  }

  stop(): void {
    this.watcher?.close();
    if (this.timer !== undefined) clearInterval(this.timer);
  }

  async reload(): Promise<void> {
    const next = new Map<string, KeyObject>();
    let entries: string[];
    try {
      entries = await readdir(this.dir);
    } catch (err) {
      this.log.error({ err, dir: this.dir }, "cannot read the public key directory; keeping the keys loaded before");
      return;
    }
    for (const entry of entries) {
      if (entry.startsWith(".")) continue; // Kubernetes' ..data bookkeeping
      const keyid = entry.replace(/\.(pem|pub)$/, "");
      try {
        const key = createPublicKey(await readFile(path.join(this.dir, entry)));
        if (key.asymmetricKeyType !== "ed25519") throw new Error(`key type ${key.asymmetricKeyType ?? "?"}, expected ed25519`);
        next.set(keyid, key);
      } catch (err) {
        this.log.warn({ keyid, err: err instanceof Error ? err.message : String(err) }, "ignoring an unusable public key file");
      }
    }
    const changed = [...next.keys()].sort().join(",") !== [...this.keys.keys()].sort().join(",");
    this.keys = next;
    if (changed) this.log.info({ keyids: [...next.keys()] }, "public keys loaded");
  }
}
