/**
 * The WAL file format (sqlite.org/walformat.html, wal.c): the 32-byte header
 * and the 24-byte frame header, both big-endian. Pure: bytes in, values out.
 *
 * @module
 */

import { WalshipError } from "../errors.ts";
import { walChecksum } from "./checksum.ts";

/** Magic with little-endian checksums (what x86 and ARM writers use). */
export const WAL_MAGIC_LE = 0x377f0682;
/** Magic with big-endian checksums. */
export const WAL_MAGIC_BE = 0x377f0683;
/** The only WAL format version SQLite writes. */
export const WAL_VERSION = 3007000;
export const WAL_HEADER_SIZE = 32;
export const WAL_FRAME_HEADER_SIZE = 24;

/** A parsed, validated WAL header. */
export interface WalHeader {
  /** True for magic 0x377f0683: checksums read words big-endian. */
  bigEndian: boolean;
  pageSize: number;
  checkpointSeq: number;
  salt1: number;
  salt2: number;
  checksum1: number;
  checksum2: number;
}

/** A parsed frame header (not yet validated against the chain). */
export interface FrameHeader {
  pageNumber: number;
  /** Database size in pages after this commit; 0 when the frame is not a commit. */
  commitSize: number;
  salt1: number;
  salt2: number;
  checksum1: number;
  checksum2: number;
}

/** True for a power of two from 512 to 65536, the page sizes SQLite allows. */
export function isValidPageSize(n: number): boolean {
  return n >= 512 && n <= 65536 && (n & (n - 1)) === 0;
}

/**
 * Parses and validates the first 32 bytes of a WAL. Throws a CORRUPT
 * {@linkcode WalshipError} saying what is wrong when SQLite would ignore the
 * header (bad magic, version, page size or checksum), or when fewer than 32
 * bytes are given.
 *
 * @example
 * ```ts
 * const header = parseWalHeader(bytes.subarray(0, 32));
 * console.log(header.pageSize, header.salt1, header.salt2);
 * ```
 */
export function parseWalHeader(bytes: Uint8Array): WalHeader {
  if (bytes.length < WAL_HEADER_SIZE) {
    throw new WalshipError("CORRUPT", `WAL header is ${bytes.length} bytes, needs 32`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, WAL_HEADER_SIZE);
  const magic = v.getUint32(0);
  if (magic !== WAL_MAGIC_LE && magic !== WAL_MAGIC_BE) {
    throw new WalshipError("CORRUPT", `WAL header has bad magic 0x${magic.toString(16)}`);
  }
  const version = v.getUint32(4);
  if (version !== WAL_VERSION) {
    throw new WalshipError("CORRUPT", `WAL header has unknown version ${version}`);
  }
  const pageSize = v.getUint32(8);
  if (!isValidPageSize(pageSize)) {
    throw new WalshipError("CORRUPT", `WAL header has invalid page size ${pageSize}`);
  }
  const header: WalHeader = {
    bigEndian: magic === WAL_MAGIC_BE,
    pageSize,
    checkpointSeq: v.getUint32(12),
    salt1: v.getUint32(16),
    salt2: v.getUint32(20),
    checksum1: v.getUint32(24),
    checksum2: v.getUint32(28),
  };
  const state = new Uint32Array(2);
  walChecksum(state, bytes, 0, 24, header.bigEndian);
  if (state[0] !== header.checksum1 || state[1] !== header.checksum2) {
    throw new WalshipError("CORRUPT", "WAL header checksum does not match");
  }
  return header;
}

/** Parses the 24-byte frame header at `offset` of `bytes`. */
export function parseFrameHeader(bytes: Uint8Array, offset = 0): FrameHeader {
  const v = new DataView(bytes.buffer, bytes.byteOffset + offset, WAL_FRAME_HEADER_SIZE);
  return {
    pageNumber: v.getUint32(0),
    commitSize: v.getUint32(4),
    salt1: v.getUint32(8),
    salt2: v.getUint32(12),
    checksum1: v.getUint32(16),
    checksum2: v.getUint32(20),
  };
}

/** Byte offset of 1-based frame `index` in a WAL of this page size. */
export function frameOffset(index: number, pageSize: number): number {
  return WAL_HEADER_SIZE + (index - 1) * (WAL_FRAME_HEADER_SIZE + pageSize);
}

/**
 * Builds a valid 32-byte WAL header. SQLite never needs this from us; tests
 * and restore verification use it to make or re-check WALs.
 */
export function encodeWalHeader(h: Omit<WalHeader, "checksum1" | "checksum2">): Uint8Array {
  const bytes = new Uint8Array(WAL_HEADER_SIZE);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, h.bigEndian ? WAL_MAGIC_BE : WAL_MAGIC_LE);
  v.setUint32(4, WAL_VERSION);
  v.setUint32(8, h.pageSize);
  v.setUint32(12, h.checkpointSeq);
  v.setUint32(16, h.salt1);
  v.setUint32(20, h.salt2);
  const state = new Uint32Array(2);
  walChecksum(state, bytes, 0, 24, h.bigEndian);
  v.setUint32(24, state[0]);
  v.setUint32(28, state[1]);
  return bytes;
}
