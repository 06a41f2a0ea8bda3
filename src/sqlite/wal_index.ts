/**
 * The wal-index header at the start of the -shm file (wal.c: WalIndexHdr,
 * WalCkptInfo). Two 48-byte copies of the header that SQLite writes one after
 * the other; a reader trusts them only when both agree and the checksum
 * holds, and tries again otherwise. Fields are in the host's byte order,
 * except the salts, which are copied raw from the WAL header (big-endian).
 * Pure: bytes in, values out.
 *
 * @module
 */

import { isHostLittleEndian, walChecksum } from "./checksum.ts";

/** Bytes of the -shm a reader needs: both header copies and the checkpoint info with lock bytes. */
export const WAL_INDEX_HEADER_BYTES = 136;
/** Byte offsets of the lock bytes in -shm (wal.c WALINDEX_LOCK_OFFSET = 120). */
export const SHM_LOCK = {
  WRITE: 120,
  CKPT: 121,
  RECOVER: 122,
  /** READ_LOCK(i) is at 123 + i, for i in 0..4. */
  READ0: 123,
  DMS: 128,
} as const;
/** A read mark no reader uses. */
export const READ_MARK_UNUSED = 0xffffffff;

/** The fields of a consistent wal-index header. */
export interface WalIndexHeader {
  /** Bumped by every commit; survives WAL restarts; reset when the -shm is rebuilt. */
  iChange: number;
  bigEndianChecksum: boolean;
  pageSize: number;
  /** Index of the last valid commit frame in the WAL. */
  mxFrame: number;
  /** Database size in pages. */
  nPage: number;
  /** Salts of the WAL epoch this header describes. */
  salt1: number;
  salt2: number;
  /** Running checksum at mxFrame. */
  frameChecksum1: number;
  frameChecksum2: number;
  /** Frames already copied back into the database file. */
  nBackfill: number;
  /**
   * The last frame any checkpoint of this epoch set out to copy (wal.c sets
   * it before writing a page): the database file holds no page of a later frame.
   */
  nBackfillAttempted: number;
  /** aReadMark[0..4]; 0xffffffff marks an unused slot. */
  readMarks: number[];
}

/** Why a wal-index header could not be read. */
export type WalIndexProblem = "short" | "not-initialized" | "copies-differ" | "checksum";

/**
 * Parses the first 136 bytes of a -shm file. Returns the header, or the
 * reason it is not consistent right now (SQLite may be writing it: read again).
 *
 * @example
 * ```ts
 * const r = parseWalIndex(shmBytes);
 * if ("header" in r) console.log(r.header.mxFrame, r.header.iChange);
 * ```
 */
export function parseWalIndex(
  bytes: Uint8Array,
): { header: WalIndexHeader } | { problem: WalIndexProblem } {
  if (bytes.length < WAL_INDEX_HEADER_BYTES) return { problem: "short" };
  for (let i = 0; i < 48; i++) {
    if (bytes[i] !== bytes[48 + i]) return { problem: "copies-differ" };
  }
  const le = isHostLittleEndian;
  const v = new DataView(bytes.buffer, bytes.byteOffset, WAL_INDEX_HEADER_BYTES);
  if (bytes[12] !== 1) return { problem: "not-initialized" };
  const state = new Uint32Array(2);
  // SQLite checksums the header in native order: the order the host stores words in.
  walChecksum(state, bytes, 0, 40, !le);
  if (state[0] !== v.getUint32(40, le) || state[1] !== v.getUint32(44, le)) {
    return { problem: "checksum" };
  }
  const rawPageSize = v.getUint16(14, le);
  const readMarks: number[] = [];
  for (let i = 0; i < 5; i++) readMarks.push(v.getUint32(100 + 4 * i, le));
  return {
    header: {
      iChange: v.getUint32(8, le),
      bigEndianChecksum: bytes[13] !== 0,
      pageSize: (rawPageSize & 0xfe00) + ((rawPageSize & 1) << 16),
      mxFrame: v.getUint32(16, le),
      nPage: v.getUint32(20, le),
      frameChecksum1: v.getUint32(24, le),
      frameChecksum2: v.getUint32(28, le),
      salt1: v.getUint32(32, false),
      salt2: v.getUint32(36, false),
      nBackfill: v.getUint32(96, le),
      nBackfillAttempted: v.getUint32(128, le),
      readMarks,
    },
  };
}
