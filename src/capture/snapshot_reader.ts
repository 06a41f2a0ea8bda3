/**
 * Captures a consistent image of a live database without SQLite (DESIGN.md
 * invariant 3). A raw copy of the file alone is not consistent: a checkpoint
 * may be copying pages into it meanwhile. But every page a checkpoint writes
 * comes from the WAL, so the copy is consistent once every frame of the
 * current WAL epoch, from frame 1 up to a commit read *after* the copy
 * finished, is laid over it, provided the WAL did not restart in between
 * (same salts before and after). Pages past that commit's database size are
 * dropped. Otherwise: try again.
 *
 * @module
 */

import fs from "node:fs";
import { WalshipError } from "../errors.ts";
import { DB_HEADER_SIZE, parseDbHeader } from "../sqlite/db_header.ts";
import { WAL_FRAME_HEADER_SIZE } from "../sqlite/wal.ts";
import { readWalHeader, scanFrames, type WalPosition } from "../sqlite/wal_scanner.ts";
import { ioError, openReadOnly, readWalIndexFile } from "./file_source.ts";
import type { FollowResult, WalFollower } from "./wal_follower.ts";

/** A captured database image in a local file. */
export interface CapturedImage {
  /** The image file: temporary, not fsynced (only what is made from it must be durable). */
  path: string;
  pageSize: number;
  /** Pages in the image. */
  dbSize: number;
  /** The WAL position the image stands for. */
  position: WalPosition | null;
  /** Checksum byte order of the WAL epoch at `position`. */
  bigEndian: boolean;
}

/** Options for {@linkcode captureImage}. */
export interface CaptureOptions {
  /** Accept a WAL epoch change without proof: this image becomes the new base. */
  baseline: boolean;
  /** Receives what the follower read while the image was taken. */
  onPoll: (result: FollowResult) => void;
  /** Attempts before giving up; default 10. */
  attempts?: number;
}

/**
 * Copies the database to `target` and makes it consistent, reading the WAL
 * through `follower` (whose position moves to the one the image stands for).
 * Throws when the database kept changing under every attempt, or when the
 * follower reports lost continuity (then `onPoll` saw the verdict).
 */
export async function captureImage(
  dbPath: string,
  follower: WalFollower,
  target: string,
  options: CaptureOptions,
): Promise<CapturedImage> {
  const attempts = options.attempts ?? 10;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const before = liveState(dbPath);
    await copyFile(dbPath, target);
    for (;;) {
      const result = follower.poll({ baseline: options.baseline });
      options.onPoll(result);
      if (result.lost) {
        throw new WalshipError("CORRUPT", `snapshot aborted: ${result.lost}`);
      }
      if (!result.more) break;
    }
    const after = liveState(dbPath);
    if (!sameEpoch(before, after)) continue;
    const image = overlay(dbPath, follower, target);
    if (image) return image;
  }
  throw new WalshipError(
    "IO",
    `could not take a consistent snapshot of ${dbPath} in ${attempts} attempts: the WAL kept restarting`,
    { transient: true },
  );
}

interface LiveState {
  salts: string | null;
  iChange: number | null;
  db: string;
}

function liveState(dbPath: string): LiveState {
  const wal = openReadOnly(`${dbPath}-wal`);
  let salts: string | null = null;
  if (wal) {
    const h = readWalHeader(wal);
    wal.close();
    if (h) salts = `${h.salt1}:${h.salt2}`;
  }
  const st = fs.statSync(dbPath, { bigint: true });
  return {
    salts,
    iChange: readWalIndexFile(`${dbPath}-shm`)?.iChange ?? null,
    db: `${st.ino}:${st.size}:${st.mtimeNs}`,
  };
}

/**
 * True when no WAL restart can have happened between the two states. With a
 * WAL, its salts must match. Without one, nothing may have been committed or
 * checkpointed in between: same iChange and an untouched database file.
 */
function sameEpoch(a: LiveState, b: LiveState): boolean {
  if (a.salts !== null || b.salts !== null) return a.salts === b.salts;
  return a.iChange === b.iChange && a.db === b.db;
}

/**
 * Copies the database file inside the kernel (copy_file_range, or sendfile,
 * under both runtimes), not through a buffer of ours. The copy gets the
 * database's mode; it is made ours alone and writable, for the overlay.
 */
async function copyFile(from: string, to: string): Promise<void> {
  try {
    await fs.promises.copyFile(from, to);
    await fs.promises.chmod(to, 0o600);
  } catch (err) {
    throw ioError(`cannot copy ${from} to ${to}`, err);
  }
}

/** Lays frames 1..position of the current epoch over the copy; null when the WAL moved on meanwhile. */
function overlay(dbPath: string, follower: WalFollower, target: string): CapturedImage | null {
  const position = follower.position;
  const fd = fs.openSync(target, "r+");
  try {
    let pageSize: number;
    let dbSize: number;
    if (position && position.frame > 0) {
      const wal = openReadOnly(`${dbPath}-wal`);
      if (!wal) return null;
      try {
        const header = readWalHeader(wal);
        if (!header || header.salt1 !== position.salt1 || header.salt2 !== position.salt2) return null;
        pageSize = header.pageSize;
        let from: WalPosition | null = null;
        let reached = 0;
        while (reached < position.frame) {
          const scan = scanFrames(wal, header, from, { collect: true, maxBytes: 16 << 20, maxFrame: position.frame });
          if (scan.transactions.length === 0) return null;
          for (const tx of scan.transactions) writeFrames(fd, tx.frames!, tx.pages, pageSize);
          from = scan.position;
          reached = scan.position.frame;
        }
        if (from!.checksum1 !== position.checksum1 || from!.checksum2 !== position.checksum2) return null;
      } finally {
        wal.close();
      }
      dbSize = follower.dbSize;
    } else {
      const head = new Uint8Array(DB_HEADER_SIZE);
      fs.readSync(fd, head, 0, DB_HEADER_SIZE, 0);
      const header = parseDbHeader(head);
      pageSize = header.pageSize;
      dbSize = header.pageCount ?? Math.floor(fs.fstatSync(fd).size / pageSize);
    }
    // Not fsynced: the image is a temporary file; the object made from it is.
    fs.ftruncateSync(fd, dbSize * pageSize);
    return { path: target, pageSize, dbSize, position, bigEndian: follower.bigEndian };
  } catch (err) {
    if (err instanceof WalshipError) throw err;
    throw ioError(`cannot build snapshot image ${target}`, err);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes each frame's page at its place in the database file. */
export function writeFrames(fd: number, frames: Uint8Array, pages: number[], pageSize: number): void {
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  for (let i = 0; i < pages.length; i++) {
    const at = i * frameSize + WAL_FRAME_HEADER_SIZE;
    fs.writeSync(fd, frames, at, pageSize, (pages[i] - 1) * pageSize);
  }
}
