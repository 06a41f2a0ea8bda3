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

import { concatBytes } from "../bytes.ts";
import { WalshipError } from "../errors.ts";
import type { SegmentMeta } from "./object_format.ts";
import { rethrowAs, type ZstdChunkDecoder } from "./zstd.ts";
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
 * A segment's payload decompressed as it is read, piece by piece, in
 * chunks written into the buffers of `decoder`, which it reuses (see
 * {@linkcode ZstdChunkDecoder}); a restore hands every object the same
 * decoder. For {@linkcode decodeSegmentBody}, which takes a chunk only once
 * the records before it are read, and for a consumer that is done with
 * each record before it takes the next. A consumer that stops early never
 * decompresses the rest. Throws CORRUPT when the pieces do not add up to
 * the payload, when a piece does not decompress, as soon as the output
 * passes `bodySize`, or at the end when it falls short.
 */
export function* streamSegmentBody(
  meta: SegmentMeta,
  payload: Uint8Array,
  what: string,
  decoder: ZstdChunkDecoder,
): Generator<Uint8Array> {
  checkPieces(meta, payload, what);
  let length = 0;
  let at = 0;
  for (const size of meta.pieces ?? [payload.length]) {
    // A decoder reset before each piece: a piece that is not whole frames then fails, as it would alone.
    decoder.reset();
    const piece = payload.subarray(at, at + size);
    at += size;
    const output = function* () {
      yield* decoder.push(piece);
      yield* decoder.end();
    };
    for (const chunk of rethrowAs(output(), (err) => notDecompressing(what, err))) {
      length += chunk.length;
      if (length > meta.bodySize) throw wrongBodySize(meta, length, what);
      yield chunk;
    }
  }
  if (length !== meta.bodySize) throw wrongBodySize(meta, length, what);
}

function checkPieces(meta: SegmentMeta, payload: Uint8Array, what: string): void {
  if (!meta.pieces) return;
  const total = meta.pieces.reduce((n, p) => n + p, 0);
  if (total !== payload.length) {
    throw new WalshipError("CORRUPT", `${what}: its pieces add up to ${total} bytes, the payload is ${payload.length}`);
  }
}

function notDecompressing(what: string, cause: unknown): WalshipError {
  return new WalshipError("CORRUPT", `${what} has a payload that does not decompress`, { cause });
}

function wrongBodySize(meta: SegmentMeta, length: number, what: string): WalshipError {
  return new WalshipError("CORRUPT", `${what}: payload is ${length} bytes, expected ${meta.bodySize}`);
}

/**
 * Reads the records of a segment body, whole or in parts (a record may
 * span parts; parts are taken from an iterable only as the records reach
 * them); throws CORRUPT on malformed bytes. A header's or transaction's
 * bytes point into the body where they lie within one part, and are valid
 * while at most one more part is taken (as {@linkcode streamSegmentBody}
 * reuses its buffers): a consumer must be done with a record before it
 * asks for the next. A heal's pages are copies.
 */
export function* decodeSegmentBody(
  body: Uint8Array | Iterable<Uint8Array>,
  pageSize: number,
  what: string,
): Generator<SegmentRecord> {
  const cursor = new PartsCursor(body instanceof Uint8Array ? [body] : body);
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  const truncated = () => new WalshipError("CORRUPT", `${what} ends inside a record`);
  const take = (n: number): Uint8Array => {
    const bytes = cursor.take(n);
    if (!bytes) throw truncated();
    return bytes;
  };
  const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.length);
  try {
    yield* records();
  } finally {
    cursor.close(); // a consumer that stops early closes the parts too (their finally blocks run)
  }

  function* records(): Generator<SegmentRecord> {
    while (!cursor.done) {
      const tag = take(1)[0];
      if (tag === TAG_HEADER) {
        yield { tag: "header", header: take(WAL_HEADER_SIZE) };
      } else if (tag === TAG_TRANSACTION) {
        // Fields are read before the frames are taken: taking them may move on to parts that reuse this one's buffer.
        const v = view(take(TX_FIELDS));
        const firstFrame = v.getUint32(0);
        const frameCount = v.getUint32(4);
        const time = v.getFloat64(8);
        if (frameCount === 0) throw truncated(); // a transaction without frames: malformed
        const frames = take(frameCount * frameSize);
        yield { tag: "transaction", firstFrame, frameCount, time, frames };
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
        // Pages are copied: a heal may span more parts than a reused buffer outlives.
        for (let i = 0; i < count; i++) {
          const pgno = view(take(4)).getUint32(0);
          rec.pages.push({ pgno, page: take(pageSize).slice() });
        }
        yield rec;
      } else {
        throw new WalshipError("CORRUPT", `${what} has an unknown record tag ${tag}`);
      }
    }
  }
}

/**
 * Reads a body given in parts in order, taking each part from its iterator
 * only once the bytes before it are read: a view where a run lies within
 * one part, a copy across two.
 */
class PartsCursor {
  readonly #parts: Iterator<Uint8Array>;
  #part: Uint8Array | null = null;
  #at = 0;

  constructor(parts: Iterable<Uint8Array>) {
    this.#parts = parts[Symbol.iterator]();
  }

  /** Lets go of the parts' iterator (its finally blocks run), read to the end or not. */
  close(): void {
    this.#parts.return?.();
  }

  /** True once every byte of every part is read. */
  get done(): boolean {
    return !this.#fill();
  }

  /** The next `n` bytes, or null when fewer are left. */
  take(n: number): Uint8Array | null {
    if (!this.#fill()) return null;
    const part = this.#part!;
    if (this.#at + n <= part.length) {
      const out = part.subarray(this.#at, this.#at + n);
      this.#at += n;
      return out;
    }
    const out = new Uint8Array(n);
    for (let got = 0; got < n;) {
      if (!this.#fill()) return null;
      const p = this.#part!;
      const k = Math.min(n - got, p.length - this.#at);
      out.set(p.subarray(this.#at, this.#at + k), got);
      got += k;
      this.#at += k;
    }
    return out;
  }

  /** Makes sure the current part has bytes left to read, taking the next non-empty one if not; false at the end. */
  #fill(): boolean {
    while (this.#part === null || this.#at === this.#part.length) {
      const next = this.#parts.next();
      if (next.done) {
        this.#part = null;
        return false;
      }
      this.#part = next.value;
      this.#at = 0;
      if (this.#part.length > 0) return true;
    }
    return true;
  }
}
