/**
 * Read-only access to the live files SQLite owns. walship opens the
 * database, -wal and -shm for reading only and never writes them.
 *
 * @module
 */

import fs from "node:fs";
import { WalshipError } from "../errors.ts";
import type { ByteSource } from "../sqlite/wal_scanner.ts";
import { parseWalIndex, WAL_INDEX_HEADER_BYTES, type WalIndexHeader } from "../sqlite/wal_index.ts";

/** A read-only open file that is also a {@linkcode ByteSource}. */
export interface OpenFile extends ByteSource {
  readonly fd: number;
  size(): number;
  close(): void;
}

/** Opens `path` read-only; null when it does not exist. */
export function openReadOnly(path: string): OpenFile | null {
  let fd: number;
  try {
    fd = fs.openSync(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw ioError(`cannot open ${path}`, err);
  }
  return {
    fd,
    read(into, offset, length) {
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, into, done, length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      return done;
    },
    size: () => fs.fstatSync(fd).size,
    close: () => fs.closeSync(fd),
  };
}

/** Reads up to `length` bytes at the start of `path`; null when it does not exist. */
export function readHead(path: string, length: number): Uint8Array | null {
  const file = openReadOnly(path);
  if (!file) return null;
  try {
    const bytes = new Uint8Array(length);
    return bytes.subarray(0, file.read(bytes, 0, length));
  } finally {
    file.close();
  }
}

/**
 * Reads a consistent wal-index header from the -shm file, trying again while
 * SQLite is in the middle of writing it. Null when the file is absent, too
 * short, or never consistent within `attempts` reads.
 */
export function readWalIndexFile(shmPath: string, attempts = 100): WalIndexHeader | null {
  const file = openReadOnly(shmPath);
  if (!file) return null;
  try {
    const bytes = new Uint8Array(WAL_INDEX_HEADER_BYTES);
    for (let i = 0; i < attempts; i++) {
      if (file.read(bytes, 0, WAL_INDEX_HEADER_BYTES) < WAL_INDEX_HEADER_BYTES) return null;
      const parsed = parseWalIndex(bytes);
      if ("header" in parsed) return parsed.header;
      if (parsed.problem === "short" || parsed.problem === "not-initialized") return null;
    }
    return null;
  } finally {
    file.close();
  }
}

/** Size, mtime and inode of a file, or "absent": enough to notice that someone wrote it. */
export function fileSignature(path: string): string {
  try {
    const st = fs.statSync(path, { bigint: true });
    return `${st.ino}:${st.size}:${st.mtimeNs}`;
  } catch {
    return "absent";
  }
}

/** A WalshipError for a failed local file operation, with the errno in words. */
export function ioError(what: string, err: unknown): WalshipError {
  const code = (err as NodeJS.ErrnoException)?.code;
  const why = code === "ENOSPC"
    ? "disk full"
    : code === "EACCES" || code === "EPERM"
    ? "permission denied"
    : code === "EROFS"
    ? "read-only file system"
    : code === "ENOENT"
    ? "no such file or directory"
    : code === "ENOTDIR"
    ? "not a directory"
    : (err as Error)?.message ?? String(err);
  return new WalshipError(code === "ENOENT" ? "NOT_FOUND" : "IO", `${what}: ${why}`, { cause: err });
}
