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
 * {@linkcode readConsistentImage} reads without the copy when it can: it
 * reads the database file in place, laying the frames of the WAL up to a
 * commit read *before* the read over each run of pages as it goes, and
 * afterwards proves that no checkpoint wrote a later frame into the file
 * meanwhile (same salts; nBackfill and nBackfillAttempted within those
 * frames; no checkpoint holding CKPT), as soon as the last run is read.
 * When the proof fails it reads again; after three failures, without libc's
 * locks, or when the caller says so (`copyBecause`), it copies
 * (docs/DECISIONS.md, "Snapshots read the database in place").
 *
 * @module
 */

import fs from "node:fs";
import { setImmediate } from "node:timers";
import { errorMessage, WalshipError } from "../errors.ts";
import { DB_HEADER_SIZE, parseDbHeader } from "../sqlite/db_header.ts";
import { F_UNLCK, F_WRLCK, type FileLocks } from "../runtime.ts";
import { frameOffset, WAL_FRAME_HEADER_SIZE } from "../sqlite/wal.ts";
import { SHM_LOCK } from "../sqlite/wal_index.ts";
import { readWalHeader, scanFrames, type WalPosition } from "../sqlite/wal_scanner.ts";
import { ioError, type OpenFile, openReadOnly, readWalIndexFile } from "./file_source.ts";
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
    readAll(follower, options);
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

/** Polls until the follower has read every commit there is; throws when it reports lost continuity. */
function readAll(follower: WalFollower, options: CaptureOptions): void {
  for (;;) {
    const result = follower.poll({ baseline: options.baseline });
    options.onPoll(result);
    if (result.lost) throw new WalshipError("CORRUPT", `snapshot aborted: ${result.lost}`);
    if (!result.more) return;
  }
}

/** Page size and size in pages of a database without WAL frames: from its header, else from its length. */
function headerGeometry(head: Uint8Array, fileSize: number): { pageSize: number; dbSize: number } {
  const header = parseDbHeader(head);
  return { pageSize: header.pageSize, dbSize: header.pageCount ?? Math.floor(fileSize / header.pageSize) };
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
      ({ pageSize, dbSize } = headerGeometry(head, fs.fstatSync(fd).size));
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

/** A run of whole pages of an image: pages `first`.. in `chunk`. */
export interface ImageChunk {
  first: number;
  chunk: Uint8Array;
}

/** An image is read in runs of whole pages of about this many bytes. */
const CHUNK_BYTES = 1 << 20;

/** Where each run of pages 1..dbSize lies in an image file. */
function* chunkRuns(pageSize: number, dbSize: number): Generator<{ first: number; offset: number; length: number }> {
  const per = Math.max(1, Math.floor(CHUNK_BYTES / pageSize));
  for (let first = 1; first <= dbSize; first += per) {
    yield { first, offset: (first - 1) * pageSize, length: Math.min(per, dbSize - first + 1) * pageSize };
  }
}

function shortImage(path: string, pageSize: number, dbSize: number, at: number): WalshipError {
  return new WalshipError(
    "IO",
    `the image ${path} ends at byte ${at}, short of its ${dbSize} pages of ${pageSize} bytes`,
  );
}

/**
 * Pages 1..dbSize of an image file, a run of whole pages (about 1 MiB) at a
 * time; throws when the file is shorter than `dbSize` pages. Two buffers
 * take turns: a chunk stays valid while the next one is read and is
 * overwritten by the one after (reused memory is much cheaper to read into
 * and hash than fresh memory).
 */
export async function* readImageChunks(path: string, pageSize: number, dbSize: number): AsyncGenerator<ImageChunk> {
  const file = await fs.promises.open(path, "r");
  try {
    const buffers: Uint8Array[] = [];
    let turn = 0;
    for (const { first, offset, length } of chunkRuns(pageSize, dbSize)) {
      const buffer = buffers[turn] ??= new Uint8Array(length);
      turn ^= 1;
      const chunk = buffer.subarray(0, length);
      for (let done = 0; done < length;) {
        const { bytesRead } = await file.read(chunk, done, length - done, offset + done);
        if (bytesRead === 0) throw shortImage(path, pageSize, dbSize, offset + done);
        done += bytesRead;
      }
      yield { first, chunk };
    }
  } finally {
    await file.close();
  }
}

/** A consistent image of the database, read a run of pages at a time. */
export interface ImageView {
  pageSize: number;
  /** Pages in the image. */
  dbSize: number;
  /** The WAL position the image stands for. */
  position: WalPosition | null;
  /** Checksum byte order of the WAL epoch at `position`. */
  bigEndian: boolean;
  /**
   * Pages 1..dbSize in runs of about 1 MiB. A run stays valid while the next
   * one is read and is overwritten by the one after; read them once.
   */
  chunks(): AsyncIterable<ImageChunk>;
}

/** Options for {@linkcode readConsistentImage}. */
export interface ReadImageOptions extends CaptureOptions {
  /** libc's locks, to see a checkpoint at work; null: always copy first. */
  locks: FileLocks | null;
  /** Why not to read in place this time (copy first), if so. */
  copyBecause?: string;
  /** Where the copy goes when one is made (removed afterwards). */
  copyPath: string;
  /** Told why a direct read was given up for a copy. */
  onCopy?: (why: string) => void;
  /** Called before each run of a direct read is read (tests: a checkpoint mid-read). */
  beforeRun?: (first: number) => void;
}

/** Options for {@linkcode readConsistentImage} that depend on what `use` returns. */
export interface ReadImageHooks<T> {
  /** Given what `use` returned from a read that failed its proof, and why it failed, to clean up after. */
  discard?: (value: T, why: string) => void;
}

/** Direct reads tried before copying instead. */
const DIRECT_ATTEMPTS = 3;

/**
 * Hands `use` a consistent image of the live database and returns what it
 * returns. `use` may be called more than once: a direct read is proven only
 * after `use` has read it, and a read that fails the proof is done again.
 * What `use` returned for an unproven read goes to `options.discard`;
 * anything else `use` does must be right whether its read is proven or not.
 */
export async function readConsistentImage<T>(
  dbPath: string,
  follower: WalFollower,
  options: ReadImageOptions & ReadImageHooks<T>,
  use: (image: ImageView) => Promise<T>,
): Promise<T> {
  let why = options.copyBecause ?? "libc's locks are unavailable";
  if (options.locks && options.copyBecause === undefined) {
    for (let attempt = 1; attempt <= DIRECT_ATTEMPTS; attempt++) {
      const outcome = await readDirect(dbPath, follower, options.locks, options, use);
      if (outcome.ok) return outcome.value;
      if (outcome.used) options.discard?.(outcome.value, outcome.why);
      why = outcome.why;
    }
    why = `${DIRECT_ATTEMPTS} direct reads failed, the last because ${why}`;
  }
  options.onCopy?.(why);
  const image = await captureImage(dbPath, follower, options.copyPath, options);
  try {
    return await use({
      pageSize: image.pageSize,
      dbSize: image.dbSize,
      position: image.position,
      bigEndian: image.bigEndian,
      chunks: () => readImageChunks(image.path, image.pageSize, image.dbSize),
    });
  } finally {
    fs.rmSync(image.path, { force: true });
  }
}

type DirectOutcome<T> =
  | { ok: true; value: T }
  | { ok: false; why: string; used: true; value: T }
  | { ok: false; why: string; used: false };

/** Where the newest version of each page in frames 1..position lies: page numbers ascending. */
interface Overlay {
  pgnos: number[];
  frames: number[];
}

/** One direct read: poll, plan the overlay, let `use` read, then prove nothing moved under it. */
async function readDirect<T>(
  dbPath: string,
  follower: WalFollower,
  locks: FileLocks,
  options: ReadImageOptions,
  use: (image: ImageView) => Promise<T>,
): Promise<DirectOutcome<T>> {
  const before = liveState(dbPath);
  readAll(follower, options);
  const position = follower.position ?? null;
  const frames = position?.frame ?? 0;
  const wal = frames > 0 ? openReadOnly(`${dbPath}-wal`) : null;
  if (frames > 0 && !wal) return { ok: false, why: "the WAL went away", used: false };
  const db = openReadOnly(dbPath);
  if (!db) {
    wal?.close();
    throw new WalshipError("IO", `${dbPath} went away while taking a snapshot`);
  }
  try {
    let pageSize: number;
    let dbSize: number;
    let overlay: Overlay = { pgnos: [], frames: [] };
    if (wal) {
      const planned = planOverlay(wal, position!);
      if (!planned) return { ok: false, why: "the WAL moved on before it was read", used: false };
      ({ pageSize, overlay } = planned);
      dbSize = follower.dbSize;
    } else {
      const head = new Uint8Array(DB_HEADER_SIZE);
      db.read(head, 0, DB_HEADER_SIZE);
      ({ pageSize, dbSize } = headerGeometry(head, db.size()));
    }
    // Why the read is not proven; undefined until the last run has been read.
    let moved: string | null | undefined;
    const value = await use({
      pageSize,
      dbSize,
      position,
      bigEndian: follower.bigEndian,
      chunks: () =>
        readInPlace(db, wal, pageSize, dbSize, overlay, options.beforeRun, (truncated) => {
          // Proven as soon as the file is read, not once `use` has compressed
          // and stored it: the shorter the window, the likelier the proof.
          try {
            moved = truncated ? "the WAL was truncated" : provenStill(dbPath, locks, before, frames);
          } catch (err) {
            moved = `the proof could not be read (${errorMessage(err)})`;
          }
        }),
    });
    if (moved === undefined) moved = "the image was not read to its end";
    return moved === null ? { ok: true, value } : { ok: false, why: moved, used: true, value };
  } finally {
    db.close();
    wal?.close();
  }
}

/** Scans frames 1..position (validating them again) for each page's newest frame; null when they are not there. */
function planOverlay(wal: OpenFile, position: WalPosition): { pageSize: number; overlay: Overlay } | null {
  const header = readWalHeader(wal);
  if (!header || header.salt1 !== position.salt1 || header.salt2 !== position.salt2) return null;
  const scan = scanFrames(wal, header, null, { maxFrame: position.frame });
  const end = scan.position;
  if (end.frame !== position.frame || end.checksum1 !== position.checksum1 || end.checksum2 !== position.checksum2) {
    return null;
  }
  const newest = new Map<number, number>();
  for (const tx of scan.transactions) tx.pages.forEach((pgno, i) => newest.set(pgno, tx.firstFrame + i));
  const pgnos = [...newest.keys()].sort((a, b) => a - b);
  return { pageSize: header.pageSize, overlay: { pgnos, frames: pgnos.map((p) => newest.get(p)!) } };
}

/**
 * Pages 1..dbSize of the live database file, each page the overlay names
 * taken from its WAL frame instead; bytes past the file's end read as zeros
 * (the copy's ftruncate does the same). Two buffers take turns.
 */
async function* readInPlace(
  db: OpenFile,
  wal: OpenFile | null,
  pageSize: number,
  dbSize: number,
  overlay: Overlay,
  beforeRun: ((first: number) => void) | undefined,
  onRead: (walTruncated: boolean) => void,
): AsyncGenerator<ImageChunk> {
  const buffers: Uint8Array[] = [];
  let turn = 0;
  let next = 0; // the overlay's next entry
  let truncated = false;
  for (const { first, offset, length } of chunkRuns(pageSize, dbSize)) {
    beforeRun?.(first);
    const buffer = buffers[turn] ??= new Uint8Array(length);
    turn ^= 1;
    const chunk = buffer.subarray(0, length);
    const got = db.read(chunk, offset, length);
    if (got < length) chunk.fill(0, got);
    const last = first + length / pageSize - 1;
    for (; next < overlay.pgnos.length && overlay.pgnos[next] <= last; next++) {
      const at = (overlay.pgnos[next] - first) * pageSize;
      const from = frameOffset(overlay.frames[next], pageSize) + WAL_FRAME_HEADER_SIZE;
      if (wal!.read(chunk.subarray(at, at + pageSize), from, pageSize) < pageSize) truncated = true;
    }
    if (first + length / pageSize > dbSize) onRead(truncated); // the last run: the file is read
    yield { first, chunk };
    // Let the event loop run between runs, as reading a copy through fs.promises does.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  if (dbSize === 0) onRead(false);
}

/**
 * Null when no checkpoint can have written a frame past `frames` into the
 * database file since `before` (the image read in place then stands for
 * frames 1..`frames`), else why not.
 */
function provenStill(dbPath: string, locks: FileLocks, before: LiveState, frames: number): string | null {
  const after = liveState(dbPath);
  if (!sameEpoch(before, after)) return "the WAL restarted";
  if (after.salts === null) return null; // no WAL, and the database file untouched: nothing moved
  const shmPath = `${dbPath}-shm`;
  const shm = readWalIndexFile(shmPath);
  if (!shm) return "the wal-index could not be read";
  if (shm.nBackfill > frames || shm.nBackfillAttempted > frames) {
    return `a checkpoint copied frames past ${frames} (up to ${Math.max(shm.nBackfill, shm.nBackfillAttempted)})`;
  }
  const { fd, errno } = locks.open(shmPath);
  if (fd < 0) return `cannot open the wal-index (errno ${errno})`;
  try {
    if (locks.testLock(fd, F_WRLCK, SHM_LOCK.CKPT, 1) !== F_UNLCK) return "a checkpoint was running";
  } finally {
    locks.close(fd);
  }
  return null;
}
