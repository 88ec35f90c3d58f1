// Nonces seen within their signatures' validity. Bounded in entries and in time: an entry is
// forgotten once its signature has expired (a replay after that fails freshness anyway).
export class ReplayCache {
  private readonly seen = new Map<string, number>();

  constructor(private readonly maxEntries: number) {}

  /**
   * Remember a nonce until `expiresAtMs`. Returns "fresh" the first time, "replay" after;
   * "full" when the cache is full of live nonces (the caller answers 503: retry later).
   */
  remember(nonce: string, expiresAtMs: number, nowMs: number): "fresh" | "replay" | "full" {
    const known = this.seen.get(nonce);
    if (known !== undefined && known >= nowMs) return "replay";
    if (this.seen.size >= this.maxEntries) this.evictExpired(nowMs);
    if (this.seen.size >= this.maxEntries) return "full";
    this.seen.set(nonce, expiresAtMs);
    return "fresh";
  }

  private evictExpired(nowMs: number): void {
    for (const [nonce, expires] of this.seen) if (expires < nowMs) this.seen.delete(nonce);
  }
}
