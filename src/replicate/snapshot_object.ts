/**
 * Turns a database image (its runs of pages) into a snapshot object file, streaming:
 * memory stays flat whatever the database size. The same reads of the image
 * can fill the page table (page_table_sync.ts), so a snapshot reads its
 * image once.
 *
 * @module
 */

import fs from "node:fs";
import { createHash } from "node:crypto";
import type { PageTable } from "../cache/page_table.ts";
import { ioError } from "../capture/file_source.ts";
import { WalshipError } from "../errors.ts";
import { encodePreamble, type SnapshotMeta } from "../replica/object_format.ts";
import { ZstdStreamEncoder } from "../replica/zstd.ts";
import { type ImageChunk, readImageChunks } from "../capture/snapshot_reader.ts";

/** Options for {@linkcode writeSnapshotObject}. */
export interface WriteSnapshotOptions {
  /**
   * Called as the image is read, with bytes read so far and the payload's
   * size (`meta.dbSize` × `meta.pageSize`); a last call reports
   * `(total, total)` once the object is written and fsynced.
   */
  onProgress?: (done: number, total: number) => void;
  /**
   * Filled with the hash of each page 1..dbSize as it is read for the
   * compressor, then truncated to dbSize: the same table as
   * `tableFromImage`, without reading the image a second time. Its page
   * size must be the snapshot's. Partly filled when the write fails.
   */
  table?: PageTable;
}

/**
 * Writes the snapshot object for pages 1..`meta.dbSize` of an image to
 * `outPath` (fsynced); returns its hash. The image is a file, or the runs of
 * pages an ImageView yields. Throws when the image holds fewer pages.
 */
export async function writeSnapshotObject(
  image: string | AsyncIterable<ImageChunk>,
  meta: SnapshotMeta,
  outPath: string,
  options: WriteSnapshotOptions = {},
): Promise<string> {
  const { onProgress, table } = options;
  if (table && table.pageSize !== meta.pageSize) {
    throw new WalshipError(
      "BAD_ARGUMENT",
      `a page table of ${table.pageSize}-byte pages cannot describe a snapshot of ${meta.pageSize}-byte pages`,
    );
  }
  const hasher = createHash("sha256");
  let out: fs.promises.FileHandle | null = null;
  try {
    const total = meta.dbSize * meta.pageSize;
    let read = 0;
    onProgress?.(0, total);
    out = await fs.promises.open(outPath, "w");
    const file = out;
    const pre = encodePreamble(meta);
    hasher.update(pre);
    await file.write(pre);
    const zstd = new ZstdStreamEncoder({ inputSize: total });
    const emit = async (bytes: Uint8Array) => {
      hasher.update(bytes);
      await file.write(bytes);
    };
    try {
      const chunks = typeof image === "string" ? readImageChunks(image, meta.pageSize, meta.dbSize) : image;
      await feed(zstd, chunks, (first, chunk) => {
        table?.setPages(first, chunk);
        read += chunk.length; // not inside onProgress?.(…): an absent callback skips its arguments
        onProgress?.(read, total);
      }, emit);
      if (read !== total) throw new WalshipError("IO", `the image gave ${read} bytes, not its ${total}`);
      for (const bytes of zstd.end()) await emit(bytes);
    } finally {
      zstd.close();
    }
    table?.truncate(meta.dbSize);
    const digest = hasher.digest();
    await file.write(digest);
    await file.sync();
    onProgress?.(total, total);
    return digest.toString("hex");
  } catch (err) {
    if (err instanceof WalshipError) throw err;
    throw ioError(`cannot write snapshot object ${outPath}`, err);
  } finally {
    await out?.close();
  }
}

/**
 * Compresses each chunk after showing it to `seen`, handing the output to
 * `emit` (which must be done with it when its promise settles: the encoder
 * reuses its buffers). The next chunk is being read meanwhile: `chunks`
 * must keep a chunk valid while the next one is read, as readImageChunks
 * and ImageView do.
 */
async function feed(
  zstd: ZstdStreamEncoder,
  chunks: AsyncIterable<ImageChunk>,
  seen: (first: number, chunk: Uint8Array) => void,
  emit: (out: Uint8Array) => Promise<void>,
): Promise<void> {
  const reader = chunks[Symbol.asyncIterator]();
  let next = reader.next();
  try {
    for (;;) {
      const step = await next;
      if (step.done) return;
      const { first, chunk } = step.value;
      seen(first, chunk);
      next = reader.next();
      next.catch(() => {}); // awaited on the next turn; a failure before then is reported there or not at all
      for (const out of zstd.push(chunk)) await emit(out);
    }
  } finally {
    // Stops the reader (and closes its file) when compressing or writing failed.
    await next.catch(() => {});
    await reader.return?.();
  }
}
