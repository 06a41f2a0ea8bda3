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

/** Writes the snapshot object for `imagePath` to `outPath` (fsynced); returns its hash. */
export async function writeSnapshotObject(imagePath: string, meta: SnapshotMeta, outPath: string): Promise<string> {
  const hasher = createHash("sha256");
  let out: fs.promises.FileHandle | null = null;
  try {
    out = await fs.promises.open(outPath, "w");
    const file = out;
    const pre = encodePreamble(meta);
    hasher.update(pre);
    await file.write(pre);
    await pipeline(
      fs.createReadStream(imagePath, { highWaterMark: 1 << 20 }),
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
    return digest.toString("hex");
  } catch (err) {
    throw ioError(`cannot write snapshot object ${outPath}`, err);
  } finally {
    await out?.close();
  }
}
