/**
 * Keeps the page table (src/cache/page_table.ts) in step with what the
 * replica holds: from a snapshot image, from each shipped segment's records,
 * and, after a crash, by replaying the segments shipped since it was saved.
 * Images are read in runs of whole pages (src/capture/snapshot_reader.ts),
 * by the table's own passes and by snapshot_object.ts, which fills a table
 * as it compresses.
 *
 * @module
 */

import fs from "node:fs";
import { PAGE_HASH_BYTES, PageTable, pageHash } from "../cache/page_table.ts";
import type { CachedObject, ObjectCache } from "../cache/object_cache.ts";
import { decodeObject } from "../replica/object_format.ts";
import { decodeSegmentBody, type SegmentRecord, streamSegmentBody } from "../replica/segment.ts";
import type { ReplicaStorage } from "../replica/storage.ts";
import { ZstdChunkDecoder } from "../replica/zstd.ts";
import { parseObjectKey } from "../replica/layout.ts";
import { listGeneration } from "../restore/plan.ts";
import { WAL_FRAME_HEADER_SIZE } from "../sqlite/wal.ts";
import { type ImageChunk, readImageChunks } from "../capture/snapshot_reader.ts";

/** Hashes every page of a database image file. */
export async function tableFromImage(
  path: string,
  pageSize: number,
  dbSize: number,
  generation: string,
  txid: number,
): Promise<PageTable> {
  const table = new PageTable(pageSize, generation, txid);
  for await (const { first, chunk } of readImageChunks(path, pageSize, dbSize)) table.setPages(first, chunk);
  table.truncate(dbSize);
  return table;
}

/** Applies a segment's records to the table, in order. */
export function applyRecords(table: PageTable, records: Iterable<SegmentRecord>): void {
  const changes = new PageChanges(table.count);
  for (const r of records) changes.addRecord(r);
  changes.applyTo(table);
}

/** Copies of pages held before they are hashed; beyond this, they are hashed early to bound memory. */
const CHANGES_HELD_BYTES = 2 << 20;

/**
 * What a run of transactions did to the pages, for the page table: only the
 * last version of each page is hashed, however often it was written (a busy
 * page is rewritten by nearly every commit of a segment). Gives the same
 * table as applying every frame in order: a shrink forgets what was written
 * above it, and {@linkcode applyTo} cuts the table at the lowest shrink before
 * it sets the pages written since.
 *
 * The copies live side by side in one buffer (grown up to
 * CHANGES_HELD_BYTES, then hashed and reused), not one small buffer each.
 */
export class PageChanges {
  /** Where the copy of each page not hashed yet starts in #slab. */
  #held = new Map<number, number>();
  #slab: Uint8Array;
  #used = 0;
  #pageSize = 0;
  /**
   * Pages whose copies were hashed early: where each one's 8-byte hash is
   * in #hashSlab (one buffer, not a small one per page: a burst of new pages
   * made tens of thousands of them).
   */
  #hashes = new Map<number, number>();
  #hashSlab = new Uint8Array(0);
  #hashUsed = 0;
  #size: number;
  #lowestShrink = Infinity;

  /** Starts from a state `dbSize` pages long; `slab` is a buffer to reuse for the copies. */
  constructor(dbSize: number, slab: Uint8Array = new Uint8Array(0)) {
    this.#size = dbSize;
    this.#slab = slab;
  }

  /** Changes starting after these, `dbSize` pages long, reusing this one's buffer: this one is not used again. */
  next(dbSize: number): PageChanges {
    const slab = this.#slab;
    this.#slab = new Uint8Array(0);
    this.#held.clear();
    return new PageChanges(dbSize, slab);
  }

  /** Page `pgno` now holds `page` (copied). */
  set(pgno: number, page: Uint8Array): void {
    const at = this.#held.get(pgno);
    if (at !== undefined) {
      this.#slab.set(page, at);
      return;
    }
    this.#pageSize = page.length;
    if (this.#used + page.length > this.#slab.length) {
      if (this.#slab.length >= CHANGES_HELD_BYTES) this.#hashHeld();
      else this.#grow(page.length);
    }
    this.#slab.set(page, this.#used);
    this.#held.set(pgno, this.#used);
    this.#used += page.length;
  }

  /** The database is now `pages` long. */
  resize(pages: number): void {
    if (pages < this.#size) {
      for (const map of [this.#held, this.#hashes]) {
        for (const pgno of map.keys()) if (pgno > pages) map.delete(pgno);
      }
      this.#lowestShrink = Math.min(this.#lowestShrink, pages);
    }
    this.#size = pages;
  }

  /** Adds the `frameCount` whole WAL frames of one transaction, and the db size of its commit frame. */
  addFrames(frames: Uint8Array, frameCount: number): void {
    const frameSize = frames.length / frameCount;
    const v = new DataView(frames.buffer, frames.byteOffset, frames.length);
    for (let at = 0; at < frames.length; at += frameSize) {
      this.set(v.getUint32(at), frames.subarray(at + WAL_FRAME_HEADER_SIZE, at + frameSize));
    }
    this.resize(v.getUint32(frames.length - frameSize + 4));
  }

  /** Adds one segment record (a WAL header changes no page). */
  addRecord(r: SegmentRecord): void {
    if (r.tag === "transaction") this.addFrames(r.frames, r.frameCount);
    else if (r.tag === "heal") {
      for (const { pgno, page } of r.pages) this.set(pgno, page);
      this.resize(r.dbSize);
    }
  }

  /** Brings `table` (at the state these changes started from) to the state after them. */
  applyTo(table: PageTable): void {
    if (this.#lowestShrink < Infinity) table.truncate(this.#lowestShrink);
    for (const [pgno, at] of this.#hashes) table.setHash(pgno, this.#hashSlab.subarray(at, at + PAGE_HASH_BYTES));
    for (const [pgno, at] of this.#held) table.set(pgno, this.#slab.subarray(at, at + this.#pageSize));
    table.truncate(this.#size);
  }

  #grow(pageSize: number): void {
    const length = Math.min(CHANGES_HELD_BYTES, Math.max(2 * this.#slab.length, 64 * pageSize, this.#used + pageSize));
    const slab = new Uint8Array(length);
    slab.set(this.#slab.subarray(0, this.#used));
    this.#slab = slab;
  }

  #hashHeld(): void {
    for (const [pgno, at] of this.#held) {
      const hash = pageHash(this.#slab.subarray(at, at + this.#pageSize));
      let to = this.#hashes.get(pgno);
      if (to === undefined) {
        if (this.#hashUsed + PAGE_HASH_BYTES > this.#hashSlab.length) {
          const bigger = new Uint8Array(Math.max(4096, 2 * this.#hashSlab.length));
          bigger.set(this.#hashSlab.subarray(0, this.#hashUsed));
          this.#hashSlab = bigger;
        }
        to = this.#hashUsed;
        this.#hashUsed += PAGE_HASH_BYTES;
        this.#hashes.set(pgno, to);
      }
      this.#hashSlab.set(hash, to);
    }
    this.#held.clear();
    this.#used = 0;
  }
}

/**
 * Brings a saved table from its txid up to `txid` by replaying the
 * generation's segments in between (from the cache when not yet uploaded
 * to `storage`, as `pending` lists them, else from it). Null when a segment is missing or unreadable.
 */
export async function replayTable(
  table: PageTable,
  txid: number,
  storage: ReplicaStorage,
  pending: CachedObject[],
  cache: ObjectCache,
): Promise<PageTable | null> {
  if (table.txid === txid) return table;
  const cached = new Map(pending.map((o) => [o.key, o]));
  const keys = new Map<string, { first: number; last: number }>();
  for (const s of (await listGeneration(storage, table.generation)).segments) keys.set(s.key, { first: s.firstTxid, last: s.lastTxid });
  // Pending as of before the listing: what was uploaded since is listed, what was not is here.
  for (const o of cached.values()) {
    const e = o.generation === table.generation ? parseObjectKey(o.generation, o.key, o.size) : null;
    if (e?.kind === "segment") keys.set(o.key, { first: e.firstTxid, last: e.lastTxid });
  }
  const todo = [...keys].filter(([, r]) => r.last > table.txid && r.last <= txid).sort((a, b) => a[1].first - b[1].first);
  // One decoder, its two output buffers reused, for every segment (applyRecords copies what it keeps).
  const decoder = new ZstdChunkDecoder();
  try {
    for (const [key, range] of todo) {
      if (range.first !== table.txid + 1) return null;
      // The uploader runs meanwhile: a cached object may be uploaded and its file removed by now.
      const local = cached.get(key);
      const bytes = (local && readIfPresent(cache.objectPath(local.hash))) || await storage.get(key);
      const { meta, payload } = decodeObject(bytes, key);
      if (meta.kind !== "segment") return null;
      applyRecords(table, decodeSegmentBody(streamSegmentBody(meta, payload, key, decoder), table.pageSize, key));
      table.txid = range.last;
    }
  } finally {
    decoder.close();
  }
  return table.txid === txid ? table : null;
}

function readIfPresent(file: string): Uint8Array | null {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

/**
 * The pages of an image (its runs of pages) that differ from the table.
 * Null when more than `maxBytes` differ (a new snapshot is then cheaper).
 */
export async function diffImage(
  chunks: AsyncIterable<ImageChunk>,
  table: PageTable,
  maxBytes: number,
): Promise<Array<{ pgno: number; page: Uint8Array }> | null> {
  const pageSize = table.pageSize;
  const changed: Array<{ pgno: number; page: Uint8Array }> = [];
  for await (const { first, chunk } of chunks) {
    for (let i = 0; i * pageSize < chunk.length; i++) {
      const page = chunk.subarray(i * pageSize, (i + 1) * pageSize);
      if (table.matches(first + i, page)) continue;
      changed.push({ pgno: first + i, page: page.slice() });
      if (changed.length * pageSize > maxBytes) return null;
    }
  }
  return changed;
}
