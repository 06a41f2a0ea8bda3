/**
 * Applies verified segments over a restored snapshot, re-checking what
 * SQLite checked when it wrote the WAL: every frame's salts and the running
 * checksum chain, commit frames where they belong, and that each object
 * starts exactly where the previous one ended. A gap or a break is an error,
 * never a silently different database (invariant 6).
 *
 * @module
 */

import { byteLength } from "../bytes.ts";
import fs from "node:fs";
import { WalshipError } from "../errors.ts";
import type { SegmentMeta } from "../replica/object_format.ts";
import { decodeSegmentBody } from "../replica/segment.ts";
import { walChecksum } from "../sqlite/checksum.ts";
import { parseWalHeader, WAL_FRAME_HEADER_SIZE } from "../sqlite/wal.ts";
import { headerPosition, type WalPosition } from "../sqlite/wal_scanner.ts";

/** Where the restore stands. */
export interface ApplyState {
  position: WalPosition | null;
  bigEndian: boolean;
  pageSize: number;
  dbSize: number;
  txid: number;
  time: number;
}

/** Where to stop: after this txid, or before the first transaction observed after this time. */
export interface ApplyLimit {
  txid: number | null;
  timestamp: number | null;
}

/**
 * Applies one segment's transactions within `limit` to `pages`, which the
 * caller flushes once it stops applying (many segments' pages may wait there
 * together; an error discards the output, so nothing needs writing before).
 * Returns true when the limit was reached (later segments must not apply).
 */
export function applySegment(
  pages: LastVersions,
  state: ApplyState,
  meta: SegmentMeta,
  body: Uint8Array | Uint8Array[] | Iterable<Uint8Array>,
  limit: ApplyLimit,
  what: string,
): boolean {
  const corrupt = (why: string) => new WalshipError("CORRUPT", `${what}: ${why}`);
  if (meta.pageSize !== state.pageSize) throw corrupt(`page size ${meta.pageSize}, expected ${state.pageSize}`);
  if (meta.firstTxid !== state.txid + 1) throw corrupt(`starts at txid ${meta.firstTxid}, expected ${state.txid + 1}`);
  if (!samePosition(meta.start, state.position)) throw corrupt("does not start where the previous object ended");
  // Parts from an iterator (streamSegmentBody) are checked against bodySize as they come.
  if (body instanceof Uint8Array || Array.isArray(body)) {
    const bodySize = byteLength(body);
    if (bodySize !== meta.bodySize) throw corrupt(`payload is ${bodySize} bytes, expected ${meta.bodySize}`);
  }
  const pageSize = state.pageSize;
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  let bigEndian = meta.bigEndian;
  let pos = state.position;
  const sum = new Uint32Array(2);
  for (const rec of decodeSegmentBody(body, pageSize, what)) {
    if (rec.tag === "header") {
      const h = parseWalHeader(rec.header);
      if (h.pageSize !== pageSize) throw corrupt(`WAL header with page size ${h.pageSize}`);
      pos = headerPosition(h);
      bigEndian = h.bigEndian;
      continue;
    }
    if ((limit.txid !== null && state.txid >= limit.txid) || (limit.timestamp !== null && rec.time > limit.timestamp)) {
      return true;
    }
    if (rec.tag === "heal") {
      // A heal carries whole pages, not frames: nothing to chain; it says
      // where the WAL stood when the pages were read, and the chain goes on from there.
      for (const { pgno, page } of rec.pages) {
        if (pgno === 0 || page.length !== pageSize) throw corrupt("a heal record is malformed");
        pages.set(pgno, page);
      }
      pos = rec.position;
      bigEndian = rec.bigEndian;
      state.position = pos;
      state.bigEndian = bigEndian;
      state.dbSize = rec.dbSize;
      state.txid++;
      state.time = rec.time;
      continue;
    }
    if (!pos) throw corrupt("a transaction before any WAL header");
    if (rec.firstFrame !== pos.frame + 1) throw corrupt(`frame ${rec.firstFrame} follows frame ${pos.frame}`);
    sum[0] = pos.checksum1;
    sum[1] = pos.checksum2;
    const v = new DataView(rec.frames.buffer, rec.frames.byteOffset, rec.frames.length);
    let commitSize = 0;
    for (let i = 0; i < rec.frameCount; i++) {
      const off = i * frameSize;
      const pageNumber = v.getUint32(off);
      commitSize = v.getUint32(off + 4);
      if (v.getUint32(off + 8) !== pos.salt1 || v.getUint32(off + 12) !== pos.salt2) {
        throw corrupt(`frame ${rec.firstFrame + i} has salts of another WAL epoch`);
      }
      walChecksum(sum, rec.frames, off, 8, bigEndian);
      walChecksum(sum, rec.frames, off + WAL_FRAME_HEADER_SIZE, pageSize, bigEndian);
      if (sum[0] !== v.getUint32(off + 16) || sum[1] !== v.getUint32(off + 20)) {
        throw corrupt(`frame ${rec.firstFrame + i} breaks the checksum chain`);
      }
      if ((commitSize !== 0) !== (i === rec.frameCount - 1) || pageNumber === 0) {
        throw corrupt(`transaction at frame ${rec.firstFrame} is malformed`);
      }
      pages.set(pageNumber, rec.frames.subarray(off + WAL_FRAME_HEADER_SIZE, off + frameSize));
    }
    pos = {
      salt1: pos.salt1,
      salt2: pos.salt2,
      frame: rec.firstFrame + rec.frameCount - 1,
      checksum1: sum[0],
      checksum2: sum[1],
    };
    state.position = pos;
    state.bigEndian = bigEndian;
    state.dbSize = commitSize;
    state.txid++;
    state.time = rec.time;
  }
  if (state.txid !== meta.lastTxid) throw corrupt(`ends at txid ${state.txid}, its name says ${meta.lastTxid}`);
  if (!samePosition(pos, meta.end)) throw corrupt("ends at another WAL position than it records");
  state.position = pos;
  state.bigEndian = bigEndian;
  return limit.txid !== null && state.txid >= limit.txid;
}

/**
 * The last version of each page the segments applied wrote, copied into a
 * bounded set of reused slots and written on {@linkcode flush} or once every
 * slot is taken: a page rewritten by many transactions is written once (once
 * per flush), and consecutive pages go in one writev. Copying lets each
 * decompressed piece go as soon as it is applied, so a restore holds the
 * slots and one piece, not the segments' bodies (allocating those afresh
 * was most of a restore's time: the kernel zeroing new pages).
 */
export class LastVersions {
  /** Page number → slot. */
  #slots = new Map<number, number>();
  /** Slot storage, grown a chunk at a time as slots are first used, then kept. */
  #chunks: Uint8Array[] = [];
  #used = 0;
  readonly #fd: number;
  readonly #pageSize: number;
  readonly #chunkPages: number;
  readonly #capacity: number;

  /** `heldBytes`: at most this many bytes of pages are held (at least one page). */
  constructor(fd: number, pageSize: number, heldBytes = HELD_BYTES) {
    this.#fd = fd;
    this.#pageSize = pageSize;
    this.#chunkPages = Math.max(1, Math.floor(CHUNK_BYTES / pageSize));
    this.#capacity = Math.max(1, Math.floor(heldBytes / pageSize));
  }

  /** Copies `page` in as the last version of `pgno`, first writing every page held when no slot is free. */
  set(pgno: number, page: Uint8Array): void {
    let slot = this.#slots.get(pgno);
    if (slot === undefined) {
      if (this.#used === this.#capacity) this.flush();
      slot = this.#used++;
      this.#slots.set(pgno, slot);
    }
    this.#slot(slot).set(page);
  }

  /** Slot `slot`'s bytes, its chunk allocated when first used. */
  #slot(slot: number): Uint8Array {
    const chunk = Math.floor(slot / this.#chunkPages);
    if (chunk === this.#chunks.length) this.#chunks.push(new Uint8Array(this.#chunkPages * this.#pageSize));
    const at = (slot % this.#chunkPages) * this.#pageSize;
    return this.#chunks[chunk].subarray(at, at + this.#pageSize);
  }

  /** Writes every page held, in page order, and frees the slots. */
  flush(): void {
    const pgnos = [...this.#slots.keys()].sort((a, b) => a - b);
    const view = (pgno: number) => this.#slot(this.#slots.get(pgno)!);
    for (let i = 0; i < pgnos.length;) {
      let j = i + 1;
      while (j < pgnos.length && pgnos[j] === pgnos[j - 1] + 1 && j - i < MAX_IOV) j++;
      writeRun(this.#fd, pgnos.slice(i, j).map(view), (pgnos[i] - 1) * this.#pageSize);
      i = j;
    }
    this.#slots.clear();
    this.#used = 0;
  }
}

/** Bytes of pages held before they are written: the restore's memory, beside one decompressed piece. */
const HELD_BYTES = 16 << 20;

/** Slot storage is allocated this much at a time. */
const CHUNK_BYTES = 1 << 20;

/** Buffers per writev (Linux's IOV_MAX). */
const MAX_IOV = 1024;

/** Writes `buffers` one after another at `position`, finishing a short writev one buffer at a time. */
function writeRun(fd: number, buffers: Uint8Array[], position: number): void {
  let written = buffers.length === 1
    ? fs.writeSync(fd, buffers[0], 0, buffers[0].length, position)
    : fs.writevSync(fd, buffers, position);
  let at = position;
  for (const b of buffers) {
    let done = Math.min(written, b.length);
    written -= done;
    while (done < b.length) done += fs.writeSync(fd, b, done, b.length - done, at + done);
    at += b.length;
  }
}

function samePosition(a: WalPosition | null, b: WalPosition | null): boolean {
  if (a === null || b === null) return a === b;
  return a.salt1 === b.salt1 && a.salt2 === b.salt2 && a.frame === b.frame &&
    a.checksum1 === b.checksum1 && a.checksum2 === b.checksum2;
}
