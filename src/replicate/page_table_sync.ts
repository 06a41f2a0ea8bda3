/**
 * Keeps the page table (src/cache/page_table.ts) in step with what the
 * replica holds: from a snapshot image, from each shipped segment's records,
 * and, after a crash, by replaying the segments shipped since it was saved.
 *
 * @module
 */

import fs from "node:fs";
import { PageTable } from "../cache/page_table.ts";
import type { CachedObject, ObjectCache } from "../cache/object_cache.ts";
import { decodeObject } from "../replica/object_format.ts";
import { decodeSegmentBody, type SegmentRecord } from "../replica/segment.ts";
import type { ReplicaStorage } from "../replica/storage.ts";
import { zstdDecompress } from "../replica/zstd.ts";
import { parseObjectKey } from "../replica/layout.ts";
import { listGeneration } from "../restore/plan.ts";
import { WAL_FRAME_HEADER_SIZE } from "../sqlite/wal.ts";

/** Hashes every page of a database image file. */
export function tableFromImage(path: string, pageSize: number, dbSize: number, generation: string, txid: number): PageTable {
  const table = new PageTable(pageSize, generation, txid);
  forEachPage(path, pageSize, dbSize, (pgno, page) => void table.set(pgno, page));
  table.truncate(dbSize);
  return table;
}

/**
 * Calls `fn` with each page 1..dbSize of an image file, read 256 pages at a
 * time (`page` is a view into a reused buffer: copy what you keep). Stops
 * early when `fn` returns false.
 */
function forEachPage(path: string, pageSize: number, dbSize: number, fn: (pgno: number, page: Uint8Array) => boolean | void): void {
  const fd = fs.openSync(path, "r");
  try {
    const chunk = new Uint8Array(pageSize * 256);
    for (let first = 1; first <= dbSize; first += 256) {
      const pages = Math.min(256, dbSize - first + 1);
      fs.readSync(fd, chunk, 0, pages * pageSize, (first - 1) * pageSize);
      for (let i = 0; i < pages; i++) {
        if (fn(first + i, chunk.subarray(i * pageSize, (i + 1) * pageSize)) === false) return;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Applies a segment's records to the table, in order. */
export function applyRecords(table: PageTable, records: Iterable<SegmentRecord>): void {
  const pageSize = table.pageSize;
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  for (const r of records) {
    if (r.tag === "transaction") {
      const v = new DataView(r.frames.buffer, r.frames.byteOffset, r.frames.length);
      for (let i = 0; i < r.frameCount; i++) {
        const at = i * frameSize;
        table.set(v.getUint32(at), r.frames.subarray(at + WAL_FRAME_HEADER_SIZE, at + frameSize));
      }
      table.truncate(v.getUint32((r.frameCount - 1) * frameSize + 4));
    } else if (r.tag === "heal") {
      for (const { pgno, page } of r.pages) table.set(pgno, page);
      table.truncate(r.dbSize);
    }
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
  for (const [key, range] of todo) {
    if (range.first !== table.txid + 1) return null;
    // The uploader runs meanwhile: a cached object may be uploaded and its file removed by now.
    const local = cached.get(key);
    const bytes = (local && readIfPresent(cache.objectPath(local.hash))) || await storage.get(key);
    const { meta, payload } = decodeObject(bytes, key);
    if (meta.kind !== "segment") return null;
    applyRecords(table, decodeSegmentBody(zstdDecompress(payload), table.pageSize, key));
    table.txid = range.last;
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
 * The pages of an image that differ from the table, with the image's size.
 * Null when more than `maxBytes` differ (a new snapshot is then cheaper).
 */
export function diffImage(
  path: string,
  dbSize: number,
  table: PageTable,
  maxBytes: number,
): Array<{ pgno: number; page: Uint8Array }> | null {
  const pageSize = table.pageSize;
  const changed: Array<{ pgno: number; page: Uint8Array }> = [];
  let tooMany = false;
  forEachPage(path, pageSize, dbSize, (pgno, page) => {
    if (table.matches(pgno, page)) return true;
    changed.push({ pgno, page: page.slice() });
    tooMany = changed.length * pageSize > maxBytes;
    return !tooMany;
  });
  if (tooMany) return null;
  return changed;
}
