/**
 * zstd for replica objects. Deno and Bun both carry zstd in `node:zlib`;
 * where a runtime lacks it (Node 20), `fzstd` decodes, so a replica stays
 * readable everywhere.
 *
 * @module
 */

import zlib from "node:zlib";
import { decompress as fzstdDecompress } from "fzstd";

/** zstd level for segments and snapshots: fast, and most of the win on SQLite pages. */
export const ZSTD_LEVEL = 3;
const hasNativeZstd = typeof zlib.zstdCompressSync === "function";

/** Compresses `data` with zstd. */
export function zstdCompress(data: Uint8Array): Uint8Array {
  if (!hasNativeZstd) throw new Error("this runtime has no zstd encoder in node:zlib: use Deno or Bun");
  return zlib.zstdCompressSync(data, {
    params: { [zlib.constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL },
  });
}

/** Decompresses a whole zstd frame (native when present, fzstd otherwise). */
export function zstdDecompress(data: Uint8Array): Uint8Array {
  return hasNativeZstd ? zlib.zstdDecompressSync(data) : fzstdDecompress(data);
}

/**
 * Output chunk size of the streaming coders: 1 MiB, not zlib's 16 KiB. Each
 * output chunk costs a hop to the runtime's thread pool and back, a write and
 * a hash update; a 1 GiB restore made 77,000 of each with 16 KiB.
 */
const STREAM_CHUNK = 1 << 20;

/** A streaming zstd encoder (node:zlib Transform). */
export function createZstdCompressStream(): zlib.ZstdCompress {
  return zlib.createZstdCompress({
    chunkSize: STREAM_CHUNK,
    params: { [zlib.constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL },
  });
}

/** A streaming zstd decoder (node:zlib Transform). */
export function createZstdDecompressStream(): zlib.ZstdDecompress {
  return zlib.createZstdDecompress({ chunkSize: STREAM_CHUNK });
}
