/**
 * Gathers transactions between uploads and turns them into one segment
 * object: at most one object per sync interval, however many transactions.
 *
 * @module
 */

import type { ObservedTransaction } from "../capture/wal_follower.ts";
import { encodeObject, type SegmentMeta } from "../replica/object_format.ts";
import { encodeSegmentBody, type SegmentRecord } from "../replica/segment.ts";
import { zstdCompress } from "../replica/zstd.ts";
import type { WalPosition } from "../sqlite/wal_scanner.ts";

/** A finished segment, ready for the cache. */
export interface BuiltSegment {
  bytes: Uint8Array;
  hash: string;
  meta: SegmentMeta;
}

/** Transactions waiting to become a segment. */
export class SegmentBuilder {
  #records: SegmentRecord[] = [];
  #start: WalPosition | null;
  #end: WalPosition | null;
  #firstTxid = 0;
  #lastTxid: number;
  #firstTime = 0;
  #lastTime = 0;
  #dbSize: number;
  #bytes = 0;
  #heldHeader: Uint8Array | null = null;
  #startBigEndian: boolean;
  #bigEndian: boolean;

  /** Starts after `lastTxid`, at `position`, with the database `dbSize` pages long. */
  constructor(lastTxid: number, position: WalPosition | null, dbSize: number, bigEndian: boolean) {
    this.#startBigEndian = bigEndian;
    this.#bigEndian = bigEndian;
    this.#lastTxid = lastTxid;
    this.#start = position;
    this.#end = position;
    this.#dbSize = dbSize;
  }

  /** Last txid handed out. */
  get txid(): number {
    return this.#lastTxid;
  }

  /** Position after the last transaction added: where the next object starts. */
  get end(): WalPosition | null {
    return this.#end;
  }

  /** Checksum byte order of the epoch at `end`. */
  get bigEndian(): boolean {
    return this.#bigEndian;
  }

  /** Database size in pages after the last transaction added. */
  get dbSize(): number {
    return this.#dbSize;
  }

  /** Unix ms when the first transaction waiting was observed (meaningless when empty). */
  get firstTime(): number {
    return this.#firstTime;
  }

  /** Frame bytes waiting. */
  get size(): number {
    return this.#bytes;
  }

  get empty(): boolean {
    return this.#records.length === 0;
  }

  /**
   * Adds what one poll of the WAL found. A new epoch's header is held until
   * its first transaction, so a segment never ends on a bare header.
   */
  add(transactions: ObservedTransaction[], epochHeader: Uint8Array | null): void {
    if (epochHeader) this.#heldHeader = epochHeader;
    for (const tx of transactions) {
      if (this.#heldHeader) {
        this.#records.push({ tag: "header", header: this.#heldHeader });
        this.#bigEndian = (this.#heldHeader[3] & 1) === 1; // magic 0x377f0683
        this.#heldHeader = null;
      }
      if (this.#records.length === 0 || this.#firstTxid === 0) {
        this.#firstTxid = this.#lastTxid + 1;
        this.#firstTime = tx.time;
      }
      this.#lastTxid++;
      this.#lastTime = tx.time;
      this.#records.push({
        tag: "transaction",
        firstFrame: tx.firstFrame,
        frameCount: tx.pages.length,
        time: tx.time,
        frames: tx.frames,
      });
      this.#bytes += tx.frames.length;
      this.#dbSize = tx.dbSize;
      // Every frame header carries its epoch's salts; read them off the first one.
      const v = new DataView(tx.frames.buffer, tx.frames.byteOffset, 16);
      this.#end = {
        salt1: v.getUint32(8),
        salt2: v.getUint32(12),
        frame: tx.lastFrame,
        checksum1: tx.checksum1,
        checksum2: tx.checksum2,
      };
    }
  }

  /** The records waiting, in order (read-only). */
  get records(): readonly SegmentRecord[] {
    return this.#records;
  }

  /**
   * Adds a heal: the pages that differ from the replicated state, as one
   * transaction standing for the live state at `position`.
   */
  addHeal(heal: {
    dbSize: number;
    time: number;
    position: WalPosition | null;
    bigEndian: boolean;
    pages: Array<{ pgno: number; page: Uint8Array }>;
  }): void {
    this.#heldHeader = null; // the heal's position supersedes an epoch header not yet shipped
    if (this.#records.length === 0 || this.#firstTxid === 0) {
      this.#firstTxid = this.#lastTxid + 1;
      this.#firstTime = heal.time;
    }
    this.#lastTxid++;
    this.#lastTime = heal.time;
    this.#records.push({ tag: "heal", ...heal });
    this.#bytes += heal.pages.reduce((n, p) => n + p.page.length, 0);
    this.#dbSize = heal.dbSize;
    this.#end = heal.position;
    this.#bigEndian = heal.bigEndian;
  }

  /** Builds the segment object of everything added, and starts over after it. */
  build(generation: string, pageSize: number): BuiltSegment {
    const body = encodeSegmentBody(this.#records);
    const meta: SegmentMeta = {
      kind: "segment",
      generation,
      pageSize,
      firstTxid: this.#firstTxid,
      lastTxid: this.#lastTxid,
      firstTime: this.#firstTime,
      lastTime: this.#lastTime,
      start: this.#start,
      end: this.#end,
      bigEndian: this.#startBigEndian,
      dbSize: this.#dbSize,
      bodySize: body.length,
    };
    const { bytes, hash } = encodeObject(meta, zstdCompress(body));
    return { bytes, hash, meta };
  }

  /** Forgets the built records: the next segment starts where this one ended. */
  commit(): void {
    this.#records = [];
    this.#start = this.#end;
    this.#startBigEndian = this.#bigEndian;
    this.#firstTxid = 0;
    this.#bytes = 0;
  }
}
