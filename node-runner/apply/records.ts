// What the node-runner remembers about each namespace it programmed, one record per namespace,
// shaped per backend, and where it keeps them.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { BoundedMap } from "../../lib/bounded-map.ts";
import type { ChainRules } from "../rules/iptables-text.ts";
import type { NetSetupStep } from "../rules/routes.ts";

/** The iptables variants, named as the backends are (backends.ts). */
export type IptablesVariant = "iptables-nft" | "iptables-legacy";

/** A family's key in a record. */
export type FamilyKey = "4" | "6";

interface RecordBase {
  readonly podUid: string;
  readonly netnsInode: string;
  /** The digest of what the apply installed (the `rules` mark); "" in an intent. */
  readonly digest: string;
  /** The link steps (addresses, policy routing) in place. */
  readonly netSetup: readonly NetSetupStep[];
}

export interface IptablesRecord extends RecordBase {
  readonly variant: IptablesVariant;
  /** Built-in-chain lines the apply added, per family. */
  readonly builtin: Partial<Record<FamilyKey, ChainRules>>;
  /** Complete owned rules after the apply, per family (for drift detection). */
  readonly owned: Partial<Record<FamilyKey, ChainRules>>;
  /**
   * The intent, written before a restore and gone from the record after it: the built-in-chain
   * lines as they were before, per family. Found on the next apply (the runner died in
   * between), every built-in line added since then is owned, so nothing the crashed apply wrote
   * is left behind.
   */
  readonly pending?: Partial<Record<FamilyKey, ChainRules>>;
}

export interface NftRecord extends RecordBase {
  readonly variant: "nftables";
  /** Hash of the Istio tables as listed after the apply (drift detection). */
  readonly nftListing: string;
}

export type NetnsRecord = IptablesRecord | NftRecord;

/** Record files could not be written (a full or read-only state directory): nothing is known to be applied. */
export class StateError extends Error {
  override name = "StateError";
}

/**
 * Records live beside the namespaces they describe (a tmpfs such as /run): both end at reboot.
 * This process is the only writer, so the store keeps the list of records in its directory
 * (read once) and the most recently used ones (a node's worth of pods, 110 by default): a new
 * pod's namespace is known to have none without a read, and an apply reads its record from
 * memory. The files are read and written synchronously: on a tmpfs each is a memory copy of a
 * few KB, where every asynchronous call is a round trip through libuv's thread pool (half a
 * millisecond per apply on a busy runner). Writes go through a temporary file and a rename.
 */
export class RecordStore {
  private readonly cache: BoundedMap<string, NetnsRecord | undefined>;
  private stored: Set<string> | undefined;
  constructor(
    private readonly dir: string,
    cacheLimit = 256,
  ) {
    this.cache = new BoundedMap(cacheLimit);
  }
  private file(inode: string): string {
    if (!/^\d+$/.test(inode)) throw new Error(`bad netns inode ${inode}`);
    return path.join(this.dir, `${inode}.json`);
  }
  /** The inodes that have a record file (the directory listed on first use). */
  private storedInodes(): Set<string> {
    if (this.stored === undefined) {
      let names: string[] = [];
      try {
        names = readdirSync(this.dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
      this.stored = new Set(names.flatMap((name) => /^(\d+)\.json$/.exec(name)?.[1] ?? []));
    }
    return this.stored;
  }
  get(inode: string): NetnsRecord | undefined {
    const file = this.file(inode);
    if (this.cache.has(inode)) return this.cache.get(inode);
    let record: NetnsRecord | undefined;
    if (this.storedInodes().has(inode)) {
      try {
        record = JSON.parse(readFileSync(file, "utf8")) as NetnsRecord;
      } catch {
        record = undefined;
      }
    }
    this.cache.set(inode, record);
    return record;
  }
  put(record: NetnsRecord): void {
    const file = this.file(record.netnsInode);
    const stored = this.storedInodes();
    this.cache.delete(record.netnsInode); // a failed write leaves the file to say what is there
    const text = JSON.stringify(record);
    try {
      try {
        writeFileSync(`${file}.tmp`, text);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        mkdirSync(this.dir, { recursive: true }); // not made yet, or removed meanwhile
        writeFileSync(`${file}.tmp`, text);
      }
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      rmSync(`${file}.tmp`, { force: true });
      throw new StateError(`cannot write the record of netns ${record.netnsInode} in ${this.dir}: ${(err as Error).message}`);
    }
    stored.add(record.netnsInode);
    this.cache.set(record.netnsInode, record);
  }
  /** Records kept (one per namespace programmed and not yet swept). */
  get size(): number {
    return this.storedInodes().size;
  }
  /**
   * Remove the records of namespaces that are gone: a deleted pod's namespace ends with it, and
   * its record would otherwise stay in the tmpfs for as long as the node runs, one per pod the
   * node ever ran. `live`: the namespaces some process is in, listed just before (synchronously:
   * no apply can write a record in between).
   */
  sweep(live: ReadonlySet<string>): { removed: number; kept: number } {
    let removed = 0;
    for (const inode of [...this.storedInodes()]) {
      if (live.has(inode)) continue;
      this.delete(inode);
      this.cache.delete(inode);
      removed++;
    }
    return { removed, kept: this.size };
  }
  delete(inode: string): void {
    const file = this.file(inode);
    this.cache.delete(inode);
    try {
      rmSync(file, { force: true });
    } catch (err) {
      throw new StateError(`cannot remove the record of netns ${inode} in ${this.dir}: ${(err as Error).message}`);
    }
    this.storedInodes().delete(inode);
    this.cache.set(inode, undefined);
  }
}
