/**
 * Turns a captured database image into a snapshot object file, streaming:
 * memory stays flat whatever the database size.
 *
 * @module
 */

import fs from "node:fs";
import { createHash } from "node:crypto";
import { pipeline } from "node:stream/promises";
import { ioError } from "../capture/file_source.ts";
import { encodePreamble, type SnapshotMeta } from "../replica/object_format.ts";
import { createZstdCompressStream } from "../replica/zstd.ts";

/** Options for {@linkcode writeSnapshotObject}. */
export interface WriteSnapshotOptions {
  /**
   * Called as the image is read, with bytes read so far and the image's
   * size (its length when the write began); a last call reports
   * `(total, total)` once the object is written and fsynced.
   */
  onProgress?: (done: number, total: number) => void;
}

/** Writes the snapshot object for `imagePath` to `outPath` (fsynced); returns its hash. */
export async function writeSnapshotObject(
  imagePath: string,
  meta: SnapshotMeta,
  outPath: string,
  options: WriteSnapshotOptions = {},
): Promise<string> {
  const hasher = createHash("sha256");
  let out: fs.promises.FileHandle | null = null;
  const onProgress = options.onProgress;
  try {
    const total = onProgress ? (await fs.promises.stat(imagePath)).size : 0;
    let read = 0;
    onProgress?.(0, total);
    out = await fs.promises.open(outPath, "w");
    const file = out;
    const pre = encodePreamble(meta);
    hasher.update(pre);
    await file.write(pre);
    const image: AsyncIterable<Uint8Array> = fs.createReadStream(imagePath, { highWaterMark: 1 << 20 });
    await pipeline(
      onProgress ? counted(image, (n) => onProgress((read += n) > total ? total : read, total)) : image,
      createZstdCompressStream(),
      async function (source: AsyncIterable<Uint8Array>) {
        for await (const chunk of source) {
          hasher.update(chunk);
          await file.write(chunk);
        }
      },
    );
    const digest = hasher.digest();
    await file.write(digest);
    await file.sync();
    onProgress?.(total, total);
    return digest.toString("hex");
  } catch (err) {
    throw ioError(`cannot write snapshot object ${outPath}`, err);
  } finally {
    await out?.close();
  }
}

async function* counted(source: AsyncIterable<Uint8Array>, add: (bytes: number) => void): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    add(chunk.length);
    yield chunk;
  }
}
