// Nonces seen within their signatures' validity. Bounded in entries and in time: an entry is
// kept until its signature can no longer pass the freshness check (acceptedUntilMs), then
// forgotten (a replay after that fails freshness anyway).
//
// With a journal file in the state directory (a tmpfs), the cache survives a restart of the
// node-runner: every fresh nonce is appended before the request is acted on, and a new
// process loads the live ones. Without a journal to load (first start, or the tmpfs was
// cleared by a reboot) the caller must refuse requests signed before it started.
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";

export class ReplayCache {
  private readonly seen = new Map<string, number>();
  private appended = 0;
  /** True when a journal from a previous process was loaded: earlier nonces are known. */
  readonly restored: boolean;

  constructor(
    private readonly maxEntries: number,
    private readonly journal?: { readonly path: string; readonly nowMs: number },
  ) {
    this.restored = journal !== undefined && existsSync(journal.path);
    if (journal !== undefined) {
      if (this.restored) this.load(journal.path, journal.nowMs);
      this.compact(journal.nowMs);
    }
  }

  /**
   * Remember a nonce until `expiresAtMs`. Returns "fresh" the first time, "replay" after;
   * "full" when the cache is full of live nonces (the caller answers 503: retry later).
   * Throws when the journal cannot be written (the caller must not act on the request).
   */
  remember(nonce: string, expiresAtMs: number, nowMs: number): "fresh" | "replay" | "full" {
    const known = this.seen.get(nonce);
    if (known !== undefined && known >= nowMs) return "replay";
    if (this.seen.size >= this.maxEntries) this.evictExpired(nowMs);
    if (this.seen.size >= this.maxEntries) return "full";
    if (this.journal !== undefined) {
      appendFileSync(this.journal.path, `${JSON.stringify([expiresAtMs, nonce])}\n`);
      if (++this.appended > 2 * this.seen.size + 1000) this.compact(nowMs);
    }
    this.seen.set(nonce, expiresAtMs);
    return "fresh";
  }

  private evictExpired(nowMs: number): void {
    for (const [nonce, expires] of this.seen) if (expires < nowMs) this.seen.delete(nonce);
  }

  private load(path: string, nowMs: number): void {
    for (const line of readFileSync(path, "utf8").split("\n")) {
      try {
        const entry: unknown = JSON.parse(line);
        if (Array.isArray(entry) && typeof entry[0] === "number" && typeof entry[1] === "string" && entry[0] >= nowMs) {
          this.seen.set(entry[1], entry[0]);
        }
      } catch {
        // A torn last line (the process died mid-write): that request was never acted on.
      }
    }
  }

  /** Rewrite the journal with the live entries only (atomically). */
  private compact(nowMs: number): void {
    if (this.journal === undefined) return;
    this.evictExpired(nowMs);
    const tmp = `${this.journal.path}.tmp`;
    writeFileSync(tmp, [...this.seen].map(([nonce, expires]) => `${JSON.stringify([expires, nonce])}\n`).join(""));
    renameSync(tmp, this.journal.path);
    this.appended = 0;
  }
}
