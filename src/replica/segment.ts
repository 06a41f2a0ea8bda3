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

import { WalshipError } from "../errors.ts";
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

/** Builds a segment payload from records; `pageSize` fixes the frame size. */
export function encodeSegmentBody(records: SegmentRecord[]): Uint8Array {
  let size = 0;
  for (const r of records) {
    size += r.tag === "header"
      ? 1 + WAL_HEADER_SIZE
      : r.tag === "transaction"
      ? 1 + TX_FIELDS + r.frames.length
      : 1 + HEAL_FIELDS + r.pages.reduce((n, p) => n + 4 + p.page.length, 0);
  }
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const r of records) {
    if (r.tag === "header") {
      out[at++] = TAG_HEADER;
      out.set(r.header.subarray(0, WAL_HEADER_SIZE), at);
      at += WAL_HEADER_SIZE;
    } else if (r.tag === "heal") {
      out[at++] = TAG_HEAL;
      v.setUint32(at, r.dbSize);
      v.setFloat64(at + 4, r.time);
      v.setUint32(at + 12, r.pages.length);
      out[at + 16] = (r.position ? 1 : 0) | (r.bigEndian ? 2 : 0);
      const p = r.position;
      if (p) [p.salt1, p.salt2, p.frame, p.checksum1, p.checksum2].forEach((x, i) => v.setUint32(at + 17 + 4 * i, x));
      at += HEAL_FIELDS;
      for (const { pgno, page } of r.pages) {
        v.setUint32(at, pgno);
        out.set(page, at + 4);
        at += 4 + page.length;
      }
    } else {
      out[at++] = TAG_TRANSACTION;
      v.setUint32(at, r.firstFrame);
      v.setUint32(at + 4, r.frameCount);
      v.setFloat64(at + 8, r.time);
      at += TX_FIELDS;
      out.set(r.frames, at);
      at += r.frames.length;
    }
  }
  return out;
}

/** Reads the records of a segment payload; throws CORRUPT on malformed bytes. */
export function* decodeSegmentBody(body: Uint8Array, pageSize: number, what: string): Generator<SegmentRecord> {
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  let at = 0;
  while (at < body.length) {
    const tag = body[at++];
    if (tag === TAG_HEADER) {
      if (at + WAL_HEADER_SIZE > body.length) throw truncated();
      yield { tag: "header", header: body.subarray(at, at + WAL_HEADER_SIZE) };
      at += WAL_HEADER_SIZE;
    } else if (tag === TAG_TRANSACTION) {
      if (at + TX_FIELDS > body.length) throw truncated();
      const firstFrame = v.getUint32(at);
      const frameCount = v.getUint32(at + 4);
      const time = v.getFloat64(at + 8);
      at += TX_FIELDS;
      const length = frameCount * frameSize;
      if (frameCount === 0 || at + length > body.length) throw truncated();
      yield { tag: "transaction", firstFrame, frameCount, time, frames: body.subarray(at, at + length) };
      at += length;
    } else if (tag === TAG_HEAL) {
      if (at + HEAL_FIELDS > body.length) throw truncated();
      const count = v.getUint32(at + 12);
      const flags = body[at + 16];
      const f = (i: number) => v.getUint32(at + 17 + 4 * i);
      const rec: SegmentRecord = {
        tag: "heal",
        dbSize: v.getUint32(at),
        time: v.getFloat64(at + 4),
        position: flags & 1 ? { salt1: f(0), salt2: f(1), frame: f(2), checksum1: f(3), checksum2: f(4) } : null,
        bigEndian: (flags & 2) !== 0,
        pages: [],
      };
      at += HEAL_FIELDS;
      if (at + count * (4 + pageSize) > body.length) throw truncated();
      for (let i = 0; i < count; i++) {
        rec.pages.push({ pgno: v.getUint32(at), page: body.subarray(at + 4, at + 4 + pageSize) });
        at += 4 + pageSize;
      }
      yield rec;
    } else {
      throw new WalshipError("CORRUPT", `${what} has an unknown record tag ${tag}`);
    }
  }

  function truncated(): WalshipError {
    return new WalshipError("CORRUPT", `${what} ends inside a record`);
  }
}
