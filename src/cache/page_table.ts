/**
 * A hash of every page of the replicated state: what the replica's latest
 * transaction holds. When walship cannot prove it read every commit, it
 * hashes the live database's pages and ships only the ones that differ
 * (a heal) instead of a whole new snapshot.
 *
 * File layout (`pages` in the cache directory), little-endian:
 *   0  8  magic "wspages1"
 *   8  4  page size
 *   12 4  page count
 *   16 8  txid the table describes (f64)
 *   24 32 generation id (ASCII, zero-padded)
 *   56 8  reserved
 *   64 .. 8 bytes per page: the first 8 bytes of the page's SHA-256
 *
 * @module
 */

import fs from "node:fs";
import { createHash } from "node:crypto";
import { writeFileDurable } from "../durable.ts";

const MAGIC = new TextEncoder().encode("wspages1");
const HEADER = 64;
const ENTRY = 8;
/** Bytes of a page's hash kept: the first 8 of its SHA-256. */
export const PAGE_HASH_BYTES = ENTRY;

/** The first 8 bytes of a page's SHA-256. */
export function pageHash(page: Uint8Array): Uint8Array {
  return createHash("sha256").update(page).digest().subarray(0, ENTRY);
}

/** Page hashes of the replicated state at (generation, txid). */
export class PageTable {
  readonly pageSize: number;
  generation: string;
  txid: number;
  #hashes: Uint8Array;
  #count: number;

  constructor(pageSize: number, generation: string, txid: number, count = 0, hashes?: Uint8Array) {
    this.pageSize = pageSize;
    this.generation = generation;
    this.txid = txid;
    this.#count = count;
    this.#hashes = hashes ?? new Uint8Array(Math.max(count, 1024) * ENTRY);
  }

  /** Pages in the replicated state. */
  get count(): number {
    return this.#count;
  }

  /** Records page `pgno` (1-based) as holding `page`. */
  set(pgno: number, page: Uint8Array): void {
    this.setHash(pgno, pageHash(page));
  }

  /** Records page `pgno` as holding a page whose {@linkcode pageHash} is `hash`. */
  setHash(pgno: number, hash: Uint8Array): void {
    this.#grow(pgno);
    this.#hashes.set(hash.subarray(0, ENTRY), (pgno - 1) * ENTRY);
    if (pgno > this.#count) this.#count = pgno;
  }

  /**
   * Records pages `first`, `first + 1`, … as holding the consecutive
   * page-sized slices of `pages` (whole pages: its length is a multiple of
   * the page size).
   */
  setPages(first: number, pages: Uint8Array): void {
    const size = this.pageSize;
    const n = Math.floor(pages.length / size);
    if (n * size !== pages.length) throw new RangeError(`${pages.length} bytes are not whole ${size}-byte pages`);
    if (n === 0) return;
    const last = first + n - 1;
    this.#grow(last);
    for (let i = 0; i < n; i++) {
      this.#hashes.set(pageHash(pages.subarray(i * size, (i + 1) * size)), (first - 1 + i) * ENTRY);
    }
    if (last > this.#count) this.#count = last;
  }

  /** Sets the database size in pages (a commit's "db size"). */
  truncate(pages: number): void {
    this.#grow(pages);
    if (pages < this.#count) this.#hashes.fill(0, pages * ENTRY, this.#count * ENTRY);
    this.#count = pages;
  }

  /** True when page `pgno` of the replicated state hashes like `page`. */
  matches(pgno: number, page: Uint8Array): boolean {
    if (pgno > this.#count) return false;
    const h = pageHash(page);
    const at = (pgno - 1) * ENTRY;
    for (let i = 0; i < ENTRY; i++) if (this.#hashes[at + i] !== h[i]) return false;
    return true;
  }

  /** Writes the table to `path` durably. */
  save(path: string): void {
    const out = new Uint8Array(HEADER + this.#count * ENTRY);
    const v = new DataView(out.buffer);
    out.set(MAGIC, 0);
    v.setUint32(8, this.pageSize, true);
    v.setUint32(12, this.#count, true);
    v.setFloat64(16, this.txid, true);
    out.set(new TextEncoder().encode(this.generation).subarray(0, 32), 24);
    out.set(this.#hashes.subarray(0, this.#count * ENTRY), HEADER);
    writeFileDurable(path, out);
  }

  /** Reads a table saved by {@linkcode save}; null when absent or unreadable. */
  static load(path: string): PageTable | null {
    let bytes: Uint8Array;
    try {
      bytes = fs.readFileSync(path);
    } catch {
      return null;
    }
    if (bytes.length < HEADER || !MAGIC.every((b, i) => bytes[i] === b)) return null;
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const count = v.getUint32(12, true);
    if (bytes.length !== HEADER + count * ENTRY) return null;
    const generation = new TextDecoder().decode(bytes.subarray(24, 56)).replace(/\0+$/, "");
    const hashes = new Uint8Array(Math.max(count, 1024) * ENTRY);
    hashes.set(bytes.subarray(HEADER));
    return new PageTable(v.getUint32(8, true), generation, v.getFloat64(16, true), count, hashes);
  }

  #grow(pages: number): void {
    if (pages * ENTRY <= this.#hashes.length) return;
    const bigger = new Uint8Array(Math.max(pages * ENTRY, this.#hashes.length * 2));
    bigger.set(this.#hashes);
    this.#hashes = bigger;
  }
}
