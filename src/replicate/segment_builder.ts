/**
 * Gathers transactions between uploads and turns them into one segment
 * object: at most one object per sync interval, however many transactions.
 *
 * Frames are not held until the segment is cut: each run of about 4 MiB of
 * records is compressed as it fills (one zstd frame, a "piece", format 2 in
 * docs/FORMAT.md), and the page table's view of what changed is kept as the
 * last version of each page (PageChanges). Memory then follows the
 * compressed size of a sync interval's writes, not the raw size, and cutting
 * a segment compresses at most one piece. Past SPILL_AFTER of pieces, the
 * rest wait in a spill file instead (docs/DECISIONS.md, "Replicate reuses
 * its memory").
 *
 * @module
 */

import fs from "node:fs";
import type { ObservedTransaction } from "../capture/wal_follower.ts";
import { type FileRun, forEachRunChunk } from "../durable.ts";
import { encodeObjectParts, type SegmentMeta } from "../replica/object_format.ts";
import { encodeRecord, type SegmentRecord } from "../replica/segment.ts";
import { ZstdPieceEncoder } from "../replica/zstd.ts";
import type { WalPosition } from "../sqlite/wal_scanner.ts";
import { PageChanges } from "./page_table_sync.ts";

/** Raw record bytes gathered before they are compressed into one piece. */
export const PIECE_BYTES = 4 << 20;

/**
 * One encoder for every builder in the process: compressing is synchronous,
 * and a context per database would hold megabytes each for hundreds of
 * mostly idle databases.
 */
let encoder: ZstdPieceEncoder | null = null;

/**
 * Compressed bytes a builder with a spill file keeps in memory; later pieces
 * of the segment go to the file. A burst of incompressible pages (workload 2
 * of the benchmarks: 36 MB of pieces per 64 MiB segment) then waits on disk,
 * while an ordinary interval's few pieces never touch it.
 */
export const SPILL_AFTER = 4 << 20;

/**
 * A finished segment, ready for the cache: the object in parts (joined, they
 * are the object). A part is bytes, or a run of the builder's spill file,
 * readable until {@linkcode SegmentBuilder.commit}.
 */
export interface BuiltSegment {
  parts: Array<Uint8Array | FileRun>;
  size: number;
  hash: string;
  meta: SegmentMeta;
}

/** The object's bytes in one array (runs read from the spill file): for tests and small segments. */
export function segmentBytes(seg: BuiltSegment): Uint8Array {
  const out = new Uint8Array(seg.size);
  let at = 0;
  const put = (chunk: Uint8Array) => {
    out.set(chunk, at);
    at += chunk.length;
  };
  for (const part of seg.parts) part instanceof Uint8Array ? put(part) : forEachRunChunk(part, put);
  return out;
}

/** Transactions waiting to become a segment. */
export class SegmentBuilder {
  /** Records added; a segment is empty without any. */
  #records = 0;
  /**
   * Encoded records not compressed yet, copied in as they are added (so no
   * reference to the WAL's read buffers outlives add()); reused piece after
   * piece.
   */
  #raw = new Uint8Array(0);
  #rawBytes = 0;
  /** Compressed pieces, in order: in memory, or runs of the spill file. */
  #pieces: Array<Uint8Array | FileRun> = [];
  /** Compressed bytes of #pieces held in memory. */
  #heldBytes = 0;
  readonly #spillPath: string | null;
  #spillFd: number | null = null;
  #spillEnd = 0;
  #changes: PageChanges;
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

  /**
   * Starts after `lastTxid`, at `position`, with the database `dbSize` pages
   * long. With `spillPath`, pieces beyond {@linkcode SPILL_AFTER} wait in that
   * file (created when first needed, emptied by each commit, removed by
   * {@linkcode close}) instead of memory.
   */
  constructor(
    lastTxid: number,
    position: WalPosition | null,
    dbSize: number,
    bigEndian: boolean,
    options: { spillPath?: string } = {},
  ) {
    this.#spillPath = options.spillPath ?? null;
    this.#startBigEndian = bigEndian;
    this.#bigEndian = bigEndian;
    this.#lastTxid = lastTxid;
    this.#start = position;
    this.#end = position;
    this.#dbSize = dbSize;
    this.#changes = new PageChanges(dbSize);
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

  /** Body bytes waiting (before compression). */
  get size(): number {
    return this.#bytes;
  }

  get empty(): boolean {
    return this.#records === 0;
  }

  /** What the records waiting do to the pages: applied to the page table once they are shipped. */
  get changes(): PageChanges {
    return this.#changes;
  }

  /**
   * Adds what one poll of the WAL found. A new epoch's header is held until
   * its first transaction, so a segment never ends on a bare header.
   */
  add(transactions: ObservedTransaction[], epochHeader: Uint8Array | null): void {
    if (epochHeader) this.#heldHeader = epochHeader;
    for (const tx of transactions) {
      if (this.#heldHeader) {
        this.#push({ tag: "header", header: this.#heldHeader });
        this.#bigEndian = (this.#heldHeader[3] & 1) === 1; // magic 0x377f0683
        this.#heldHeader = null;
      }
      if (this.#firstTxid === 0) {
        this.#firstTxid = this.#lastTxid + 1;
        this.#firstTime = tx.time;
      }
      this.#lastTxid++;
      this.#lastTime = tx.time;
      this.#push({
        tag: "transaction",
        firstFrame: tx.firstFrame,
        frameCount: tx.pages.length,
        time: tx.time,
        frames: tx.frames,
      });
      this.#changes.addFrames(tx.frames, tx.pages.length);
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
    if (this.#firstTxid === 0) {
      this.#firstTxid = this.#lastTxid + 1;
      this.#firstTime = heal.time;
    }
    this.#lastTxid++;
    this.#lastTime = heal.time;
    const record: SegmentRecord = { tag: "heal", ...heal };
    this.#push(record);
    this.#changes.addRecord(record);
    this.#dbSize = heal.dbSize;
    this.#end = heal.position;
    this.#bigEndian = heal.bigEndian;
  }

  /** Encodes a record into the raw run, compressing the run into a piece once it is big enough. */
  #push(record: SegmentRecord): void {
    this.#records++;
    for (const part of encodeRecord(record)) {
      if (this.#rawBytes + part.length > this.#raw.length) this.#growRaw(part.length);
      this.#raw.set(part, this.#rawBytes);
      this.#rawBytes += part.length;
      this.#bytes += part.length;
    }
    if (this.#rawBytes >= PIECE_BYTES) this.#compressRaw();
  }

  /** Room for `more` bytes: doubling from 64 KiB up to a piece and a bit, more only for one large record. */
  #growRaw(more: number): void {
    const need = this.#rawBytes + more;
    const raw = new Uint8Array(Math.max(need, Math.min(2 * this.#raw.length || 64 << 10, PIECE_BYTES + (1 << 20))));
    raw.set(this.#raw.subarray(0, this.#rawBytes));
    this.#raw = raw;
  }

  #compressRaw(): void {
    if (this.#rawBytes === 0) return;
    encoder ??= new ZstdPieceEncoder();
    const piece = encoder.compress(this.#raw.subarray(0, this.#rawBytes));
    this.#rawBytes = 0;
    // A large heal's buffer is not kept.
    if (this.#raw.length > 2 * PIECE_BYTES) this.#raw = new Uint8Array(0);
    if (this.#heldBytes + piece.length > SPILL_AFTER) {
      const run = this.#spill(piece);
      if (run) {
        this.#pieces.push(run);
        return;
      }
    }
    // The encoder's output is overwritten by its next piece: keep a copy of the compressed size.
    this.#pieces.push(piece.slice());
    this.#heldBytes += piece.length;
  }

  /**
   * Appends `piece` to the spill file; null when there is none or it cannot
   * be written (a full disk): the piece then stays in memory, as it would
   * have without a spill file.
   */
  #spill(piece: Uint8Array): FileRun | null {
    if (this.#spillPath === null) return null;
    try {
      this.#spillFd ??= fs.openSync(this.#spillPath, "w+");
      for (let done = 0; done < piece.length;) {
        done += fs.writeSync(this.#spillFd, piece, done, piece.length - done, this.#spillEnd + done);
      }
    } catch {
      return null;
    }
    const run = { fd: this.#spillFd, offset: this.#spillEnd, length: piece.length };
    this.#spillEnd += piece.length;
    return run;
  }

  /**
   * Builds the segment object of everything added. Call {@linkcode commit}
   * once it is stored; until then, building again gives the same object
   * (plus whatever was added since).
   */
  build(generation: string, pageSize: number): BuiltSegment {
    this.#compressRaw();
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
      bodySize: this.#bytes,
    };
    if (this.#pieces.length > 1) meta.pieces = this.#pieces.map((p) => p.length);
    return { ...encodeObjectParts(meta, this.#pieces), meta };
  }

  /** Forgets the built records: the next segment starts where this one ended. */
  commit(): void {
    this.#records = 0;
    this.#rawBytes = 0;
    this.#pieces = [];
    this.#heldBytes = 0;
    if (this.#spillFd !== null && this.#spillEnd > 0) {
      this.#spillEnd = 0;
      try {
        fs.ftruncateSync(this.#spillFd, 0);
      } catch { /* its runs are not read again; the next segment writes over them */ }
    }
    this.#changes = this.#changes.next(this.#dbSize);
    this.#start = this.#end;
    this.#startBigEndian = this.#bigEndian;
    this.#firstTxid = 0;
    this.#bytes = 0;
  }

  /** Closes and removes the spill file (the builder is not used again). */
  close(): void {
    if (this.#spillFd === null) return;
    try {
      fs.closeSync(this.#spillFd);
      fs.rmSync(this.#spillPath!, { force: true });
    } catch { /* scratch: the next builder's first spill truncates it */ }
    this.#spillFd = null;
  }
}
