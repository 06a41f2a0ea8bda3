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
import type { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { PageTable } from "../cache/page_table.ts";
import { ioError } from "../capture/file_source.ts";
import { WalshipError } from "../errors.ts";
import { encodePreamble, type SnapshotMeta } from "../replica/object_format.ts";
import { createZstdCompressStream } from "../replica/zstd.ts";
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
    const zstd = createZstdCompressStream();
    const compressed = pipeline(zstd, async function (source: AsyncIterable<Uint8Array>) {
      for await (const chunk of source) {
        hasher.update(chunk);
        await file.write(chunk);
      }
    });
    compressed.catch(() => {}); // awaited below, once the feed is done
    try {
      const chunks = typeof image === "string" ? readImageChunks(image, meta.pageSize, meta.dbSize) : image;
      await feed(zstd, chunks, (first, chunk) => {
        table?.setPages(first, chunk);
        read += chunk.length; // not inside onProgress?.(…): an absent callback skips its arguments
        onProgress?.(read, total);
      });
      if (read !== total) throw new WalshipError("IO", `the image gave ${read} bytes, not its ${total}`);
      zstd.end();
    } catch (err) {
      zstd.destroy(err as Error); // the pipeline then fails with the first error, this or its own
    }
    await compressed;
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
 * Writes each chunk to the compressor after showing it to `seen`, waiting
 * for the compressor to be done with a chunk (its write callback) before
 * the reader may reuse that chunk's buffer: `chunks` must keep a chunk
 * valid while the next one is read, as readImageChunks does.
 */
async function feed(
  zstd: Writable,
  chunks: AsyncIterable<ImageChunk>,
  seen: (first: number, chunk: Uint8Array) => void,
): Promise<void> {
  let pending: Promise<void> | null = null;
  for await (const { first, chunk } of chunks) {
    seen(first, chunk);
    // Chunk k is read while chunk k - 1 is compressed; k + 1 reuses k - 1's buffer.
    if (pending) await pending;
    pending = new Promise<void>((resolve, reject) => zstd.write(chunk, (err) => err ? reject(err) : resolve()));
    pending.catch(() => {}); // a failure while the next chunk is read is reported by the pipeline
  }
  if (pending) await pending;
}
