/**
 * The payload of a segment object, before zstd (docs/FORMAT.md): a run of
 * records, each a tag byte and its fields, big-endian.
 *
 *   'H' 0x48  the 32-byte WAL header of a new epoch: frames after it chain
 *             from its checksum and number from 1.
 *   'T' 0x54  one committed transaction: u32 first frame index, u32 frame
 *             count, f64 observed time (Unix ms), then the raw frames exactly
 *             as SQLite wrote them (24-byte header + page each). The last
 *             frame is the commit frame.
 *   'P' 0x50  a heal: the pages that differ between the replicated state and
 *             the live database, as one transaction. u32 db size (pages),
 *             f64 observed time, u32 page count, u8 flags (1: a WAL position
 *             follows, 2: big-endian checksums), u32 salt-1, salt-2, frame,
 *             checksum-1, checksum-2 (the WAL position the healed state
 *             stands for), then per page u32 page number and the page.
 *
 * Raw frames keep SQLite's own salts and checksums, so a restore re-checks
 * the chain end to end, from the WAL as written to the file it builds.
 *
 * @module
 */

import { byteLength, concatBytes } from "../bytes.ts";
import { WalshipError } from "../errors.ts";
import type { SegmentMeta } from "./object_format.ts";
import { zstdDecompress } from "./zstd.ts";
import { WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE } from "../sqlite/wal.ts";
import type { WalPosition } from "../sqlite/wal_scanner.ts";

export const TAG_HEADER = 0x48;
export const TAG_TRANSACTION = 0x54;
export const TAG_HEAL = 0x50;
const TX_FIELDS = 16;
const HEAL_FIELDS = 37;

/** A record of a segment payload. */
export type SegmentRecord =
  | { tag: "header"; header: Uint8Array }
  | { tag: "transaction"; firstFrame: number; frameCount: number; time: number; frames: Uint8Array }
  | {
    tag: "heal";
    dbSize: number;
    time: number;
    /** The WAL position the healed state stands for; null when there was no WAL. */
    position: WalPosition | null;
    bigEndian: boolean;
    /** Page numbers and pages, in pairs. */
    pages: Array<{ pgno: number; page: Uint8Array }>;
  };

/** Builds a segment payload from records. */
export function encodeSegmentBody(records: SegmentRecord[]): Uint8Array {
  return concatBytes(records.flatMap(encodeRecord));
}

/**
 * One record's bytes, as parts to be written in order: the tag and fields,
 * then the frames or pages themselves (views, not copies).
 */
export function encodeRecord(r: SegmentRecord): Uint8Array[] {
  if (r.tag === "header") {
    const out = new Uint8Array(1 + WAL_HEADER_SIZE);
    out[0] = TAG_HEADER;
    out.set(r.header.subarray(0, WAL_HEADER_SIZE), 1);
    return [out];
  }
  if (r.tag === "transaction") {
    const head = new Uint8Array(1 + TX_FIELDS);
    const v = new DataView(head.buffer);
    head[0] = TAG_TRANSACTION;
    v.setUint32(1, r.firstFrame);
    v.setUint32(5, r.frameCount);
    v.setFloat64(9, r.time);
    return [head, r.frames];
  }
  const head = new Uint8Array(1 + HEAL_FIELDS);
  const v = new DataView(head.buffer);
  head[0] = TAG_HEAL;
  v.setUint32(1, r.dbSize);
  v.setFloat64(5, r.time);
  v.setUint32(13, r.pages.length);
  head[17] = (r.position ? 1 : 0) | (r.bigEndian ? 2 : 0);
  const p = r.position;
  if (p) [p.salt1, p.salt2, p.frame, p.checksum1, p.checksum2].forEach((x, i) => v.setUint32(18 + 4 * i, x));
  const parts: Uint8Array[] = [head];
  for (const { pgno, page } of r.pages) {
    const n = new Uint8Array(4);
    new DataView(n.buffer).setUint32(0, pgno);
    parts.push(n, page);
  }
  return parts;
}

/**
 * A segment's payload decompressed, in parts: one zstd frame, or, when the
 * metadata lists `pieces` (format 2), one part per piece, for
 * {@linkcode decodeSegmentBody} (a large segment is never copied into one
 * buffer). Throws CORRUPT when the pieces do not add up to the payload or
 * the body is not `bodySize` bytes.
 */
export function decompressSegmentParts(meta: SegmentMeta, payload: Uint8Array, what: string): Uint8Array[] {
  const parts: Uint8Array[] = [];
  try {
    if (!meta.pieces) parts.push(zstdDecompress(payload));
    else {
      const total = meta.pieces.reduce((n, p) => n + p, 0);
      if (total !== payload.length) {
        throw new WalshipError("CORRUPT", `${what}: its pieces add up to ${total} bytes, the payload is ${payload.length}`);
      }
      let at = 0;
      for (const size of meta.pieces) {
        parts.push(zstdDecompress(payload.subarray(at, at + size)));
        at += size;
      }
    }
  } catch (err) {
    if (err instanceof WalshipError) throw err;
    throw new WalshipError("CORRUPT", `${what} has a payload that does not decompress`, { cause: err });
  }
  const length = byteLength(parts);
  if (length !== meta.bodySize) {
    throw new WalshipError("CORRUPT", `${what}: payload is ${length} bytes, expected ${meta.bodySize}`);
  }
  return parts;
}

/**
 * Reads the records of a segment body, whole or in parts (a record may
 * span two parts); throws CORRUPT on malformed bytes. Records point into
 * the body where they lie within one part.
 */
export function* decodeSegmentBody(body: Uint8Array | Uint8Array[], pageSize: number, what: string): Generator<SegmentRecord> {
  const cursor = new PartsCursor(Array.isArray(body) ? body : [body]);
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  const truncated = () => new WalshipError("CORRUPT", `${what} ends inside a record`);
  const take = (n: number): Uint8Array => {
    const bytes = cursor.take(n);
    if (!bytes) throw truncated();
    return bytes;
  };
  const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.length);
  while (!cursor.done) {
    const tag = take(1)[0];
    if (tag === TAG_HEADER) {
      yield { tag: "header", header: take(WAL_HEADER_SIZE) };
    } else if (tag === TAG_TRANSACTION) {
      const v = view(take(TX_FIELDS));
      const frameCount = v.getUint32(4);
      if (frameCount === 0) throw truncated(); // a transaction without frames: malformed
      const frames = take(frameCount * frameSize);
      yield { tag: "transaction", firstFrame: v.getUint32(0), frameCount, time: v.getFloat64(8), frames };
    } else if (tag === TAG_HEAL) {
      const v = view(take(HEAL_FIELDS));
      const count = v.getUint32(12);
      const flags = v.getUint8(16);
      const f = (i: number) => v.getUint32(17 + 4 * i);
      const rec: SegmentRecord = {
        tag: "heal",
        dbSize: v.getUint32(0),
        time: v.getFloat64(4),
        position: flags & 1 ? { salt1: f(0), salt2: f(1), frame: f(2), checksum1: f(3), checksum2: f(4) } : null,
        bigEndian: (flags & 2) !== 0,
        pages: [],
      };
      if (cursor.left < count * (4 + pageSize)) throw truncated();
      for (let i = 0; i < count; i++) {
        const pgno = view(take(4)).getUint32(0);
        rec.pages.push({ pgno, page: take(pageSize) });
      }
      yield rec;
    } else {
      throw new WalshipError("CORRUPT", `${what} has an unknown record tag ${tag}`);
    }
  }
}

/** Reads a body given in parts in order: a view where a run lies within one part, a copy across two. */
class PartsCursor {
  readonly #parts: Uint8Array[];
  #i = 0;
  #at = 0;
  /** Bytes not read yet. */
  left: number;

  constructor(parts: Uint8Array[]) {
    this.#parts = parts.filter((p) => p.length > 0);
    this.left = byteLength(this.#parts);
  }

  get done(): boolean {
    return this.left === 0;
  }

  /** The next `n` bytes, or null when fewer are left. */
  take(n: number): Uint8Array | null {
    if (n > this.left) return null;
    this.left -= n;
    const part = this.#parts[this.#i];
    if (this.#at + n <= part.length) {
      const out = part.subarray(this.#at, this.#at + n);
      this.#step(n);
      return out;
    }
    const out = new Uint8Array(n);
    for (let got = 0; got < n;) {
      const p = this.#parts[this.#i];
      const k = Math.min(n - got, p.length - this.#at);
      out.set(p.subarray(this.#at, this.#at + k), got);
      got += k;
      this.#step(k);
    }
    return out;
  }

  #step(n: number): void {
    this.#at += n;
    if (this.#at === this.#parts[this.#i].length) {
      this.#i++;
      this.#at = 0;
    }
  }
}
