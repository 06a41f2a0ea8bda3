/**
 * The database file header (sqlite.org/fileformat2.html §1.3): the first
 * 100 bytes of page 1. Pure: bytes in, values out.
 *
 * @module
 */

import { WalshipError } from "../errors.ts";
import { isValidPageSize } from "./wal.ts";

/** "SQLite format 3\0", the first 16 bytes of every SQLite database. */
export const SQLITE_MAGIC = new TextEncoder().encode("SQLite format 3\0");
export const DB_HEADER_SIZE = 100;

/** What walship needs from a database header. */
export interface DbHeader {
  /** Page size in bytes (the stored 1 means 65536). */
  pageSize: number;
  /**
   * Database size in pages as the header records it, or null when the header
   * says the field is stale (version-valid-for differs from the change counter).
   */
  pageCount: number | null;
  /** The file change counter (offset 24). */
  changeCounter: number;
  /** True when the write and read versions (bytes 18 and 19) are both 2: WAL mode. */
  walMode: boolean;
}

/**
 * Parses the first 100 bytes of a database file. Throws NOT_SQLITE when the
 * bytes are not a SQLite database header.
 *
 * @example
 * ```ts
 * const h = parseDbHeader(firstHundredBytes);
 * if (!h.walMode) console.log("run PRAGMA journal_mode=WAL first");
 * ```
 */
export function parseDbHeader(bytes: Uint8Array): DbHeader {
  if (bytes.length < DB_HEADER_SIZE || !SQLITE_MAGIC.every((b, i) => bytes[i] === b)) {
    throw new WalshipError("NOT_SQLITE", "not a SQLite database (bad header)");
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, DB_HEADER_SIZE);
  const raw = v.getUint16(16);
  const pageSize = raw === 1 ? 65536 : raw;
  if (!isValidPageSize(pageSize)) {
    throw new WalshipError("NOT_SQLITE", `not a SQLite database (invalid page size ${raw})`);
  }
  const changeCounter = v.getUint32(24);
  const versionValidFor = v.getUint32(92);
  const storedCount = v.getUint32(28);
  return {
    pageSize,
    pageCount: versionValidFor === changeCounter && storedCount > 0 ? storedCount : null,
    changeCounter,
    walMode: bytes[18] === 2 && bytes[19] === 2,
  };
}

/**
 * The page number that holds byte 0x40000000 (the lock page, which SQLite
 * never writes), for a database of this page size.
 */
export function lockPage(pageSize: number): number {
  return Math.floor(0x40000000 / pageSize) + 1;
}
