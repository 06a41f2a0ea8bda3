/**
 * The incremental WAL scanner. From a position (epoch salts, last frame
 * read, running checksum) it validates frames the way SQLite's recovery does
 * (wal.c, walDecodeFrame): a frame counts only if its salts equal the
 * header's, its page number is not 0 and its checksums continue the chain.
 * The log ends at the first frame that fails. Only whole transactions, up to
 * the last valid commit frame, are returned: a spilled, unfinished or
 * rolled-back tail is never handed out (DESIGN.md invariant 1).
 *
 * Pure apart from the {@linkcode ByteSource} it reads from, so tests scan
 * bytes in memory and the replicator scans the live file.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";
import { walChecksum } from "./checksum.ts";
import {
  frameOffset,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  type WalHeader,
  parseWalHeader,
} from "./wal.ts";

/** Where a scan stands: after frame `frame` (0 = before frame 1) of the epoch named by its salts. */
export interface WalPosition {
  salt1: number;
  salt2: number;
  /** Index of the last frame consumed; the next scan starts at `frame + 1`. */
  frame: number;
  /** The running checksum after `frame` (the header's checksum when `frame` is 0). */
  checksum1: number;
  checksum2: number;
}

/** Reads bytes at an offset; returns how many were read (fewer at the end of the data). */
export interface ByteSource {
  read(into: Uint8Array, offset: number, length: number): number;
  /** Current size in bytes, when known: a collecting scan then allocates no more than is there. */
  size?(): number;
}

/** A committed transaction found in the WAL. */
export interface WalTransaction {
  /** 1-based index of its first frame. */
  firstFrame: number;
  /** 1-based index of its commit frame. */
  lastFrame: number;
  /** Byte offset of its first frame in the WAL file. */
  offset: number;
  /** Byte offset just past its commit frame. */
  end: number;
  /** Page number of each frame, in frame order. */
  pages: number[];
  /** Database size in pages after the commit. */
  dbSize: number;
  /** Running checksum after the commit frame. */
  checksum1: number;
  checksum2: number;
  /** The raw frames (24-byte headers and pages), when the scan was asked to collect them. */
  frames?: Uint8Array;
}

/** Why a scan stopped. */
export type ScanStop =
  | "end" // no further whole frame in the file
  | "salt" // a frame of another epoch: stale frames behind a restarted WAL
  | "checksum" // a frame that breaks the checksum chain: torn, corrupt, or stale
  | "page-number" // a frame with page number 0
  | "limit"; // maxBytes reached; scan again from the returned position

/** The outcome of {@linkcode scanFrames}. */
export interface WalScan {
  /** True when scanning began at frame 1 (no position given, or one from another epoch). */
  fromStart: boolean;
  transactions: WalTransaction[];
  /** Position after the last returned commit, or the starting position when none was found. */
  position: WalPosition;
  /** Last frame that passed validation, possibly past the last commit (an uncommitted tail). */
  lastValidFrame: number;
  stop: ScanStop;
}

/** Options for {@linkcode scanFrames}. */
export interface ScanOptions {
  /** Keep each returned transaction's raw frames in `frames`. */
  collect?: boolean;
  /** Stop once the returned transactions hold at least this many frame bytes. */
  maxBytes?: number;
  /** Bytes read per call to the source; rounded to whole frames. Default 1 MiB. */
  chunkSize?: number;
  /** Read no frame past this index (stop "limit" when reached). */
  maxFrame?: number;
  /**
   * Where a collecting scan gets each chunk it reads into (`size` bytes);
   * default a new one. The returned frames point into these chunks.
   */
  chunk?: (size: number) => Uint8Array;
}

/** The position right after a WAL header: frame 0 of its epoch. */
export function headerPosition(header: WalHeader): WalPosition {
  return {
    salt1: header.salt1,
    salt2: header.salt2,
    frame: 0,
    checksum1: header.checksum1,
    checksum2: header.checksum2,
  };
}

/** True when `position` belongs to the epoch `header` starts. */
export function sameEpoch(position: WalPosition, header: WalHeader): boolean {
  return position.salt1 === header.salt1 && position.salt2 === header.salt2;
}

/**
 * Validates frames after `from` and returns the committed transactions found.
 * When `from` is null or from another epoch than `header`, scanning starts at
 * frame 1.
 *
 * @example
 * ```ts
 * const header = parseWalHeader(walBytes);
 * const scan = scanFrames(bytesSource(walBytes), header, null);
 * console.log(scan.transactions.length, scan.position.frame);
 * ```
 */
export function scanFrames(
  source: ByteSource,
  header: WalHeader,
  from: WalPosition | null,
  options: ScanOptions = {},
): WalScan {
  const fromStart = from === null || !sameEpoch(from, header);
  const start = fromStart ? headerPosition(header) : from;
  const pageSize = header.pageSize;
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  const framesPerChunk = Math.max(1, Math.floor((options.chunkSize ?? 1 << 20) / frameSize));
  const collect = options.collect ?? false;
  const maxBytes = options.maxBytes ?? Infinity;
  const maxFrame = options.maxFrame ?? Infinity;
  const newChunk = options.chunk ?? ((size: number) => new Uint8Array(size));

  const transactions: WalTransaction[] = [];
  const state = new Uint32Array([start.checksum1, start.checksum2]);
  let position = start;
  let next = start.frame + 1;
  let pendingPages: number[] = [];
  let pendingPieces: Uint8Array[] = [];
  let pendingStart = next;
  let collected = 0;
  let reusable: Uint8Array | null = null;

  for (;;) {
    if (next > maxFrame) return finish("limit");
    let frames = Math.min(framesPerChunk, maxFrame - next + 1);
    // A collecting scan allocates each chunk: no bigger than what the file holds now (at least a frame).
    if (collect && source.size) frames = Math.max(1, Math.min(frames, Math.floor((source.size() - frameOffset(next, pageSize)) / frameSize)));
    const want = frames * frameSize;
    // A collecting scan keeps references into each chunk, so it needs a chunk each.
    const chunk: Uint8Array = collect ? newChunk(want) : reusable ?? new Uint8Array(want);
    if (!collect) reusable = chunk;
    const got = source.read(chunk, frameOffset(next, pageSize), want);
    const whole = Math.floor(got / frameSize);
    if (whole === 0) return finish("end");
    const view = new DataView(chunk.buffer, chunk.byteOffset, whole * frameSize);
    let pieceStart = 0;
    for (let k = 0; k < whole; k++, next++) {
      const off = k * frameSize;
      const pageNumber = view.getUint32(off);
      const commitSize = view.getUint32(off + 4);
      if (view.getUint32(off + 8) !== header.salt1 || view.getUint32(off + 12) !== header.salt2) {
        return finish("salt");
      }
      if (pageNumber === 0) return finish("page-number");
      walChecksum(state, chunk, off, 8, header.bigEndian);
      walChecksum(state, chunk, off + WAL_FRAME_HEADER_SIZE, pageSize, header.bigEndian);
      if (state[0] !== view.getUint32(off + 16) || state[1] !== view.getUint32(off + 20)) {
        return finish("checksum");
      }
      pendingPages.push(pageNumber);
      if (commitSize === 0) continue;
      if (collect) pendingPieces.push(chunk.subarray(pieceStart, off + frameSize));
      pieceStart = off + frameSize;
      position = {
        salt1: header.salt1,
        salt2: header.salt2,
        frame: next,
        checksum1: state[0],
        checksum2: state[1],
      };
      const tx: WalTransaction = {
        firstFrame: pendingStart,
        lastFrame: next,
        offset: frameOffset(pendingStart, pageSize),
        end: frameOffset(next + 1, pageSize),
        pages: pendingPages,
        dbSize: commitSize,
        checksum1: state[0],
        checksum2: state[1],
      };
      if (collect) tx.frames = concatBytes(pendingPieces);
      transactions.push(tx);
      collected += tx.end - tx.offset;
      pendingPages = [];
      pendingPieces = [];
      pendingStart = next + 1;
      if (collected >= maxBytes || next >= maxFrame) {
        next++;
        return finish("limit");
      }
    }
    if (collect && pieceStart < whole * frameSize) {
      pendingPieces.push(chunk.subarray(pieceStart, whole * frameSize));
    }
    if (got < want) return finish("end");
  }

  function finish(stop: ScanStop): WalScan {
    return { fromStart, transactions, position, lastValidFrame: next - 1, stop };
  }
}

/**
 * Proves that the WAL still holds `position`: same epoch as `header`, and the
 * frame at `position.frame` is intact (its salts match and its own checksum
 * step, taken from the previous frame's stored checksum, gives the recorded
 * running checksum). Used on restart (DESIGN.md invariant 2): continuity is
 * re-read, never assumed.
 */
export function verifyPosition(source: ByteSource, header: WalHeader, position: WalPosition): boolean {
  if (!sameEpoch(position, header)) return false;
  if (position.frame === 0) {
    return position.checksum1 === header.checksum1 && position.checksum2 === header.checksum2;
  }
  const frameSize = WAL_FRAME_HEADER_SIZE + header.pageSize;
  const frame = new Uint8Array(frameSize);
  if (source.read(frame, frameOffset(position.frame, header.pageSize), frameSize) < frameSize) return false;
  const v = new DataView(frame.buffer);
  if (v.getUint32(8) !== header.salt1 || v.getUint32(12) !== header.salt2) return false;
  if (v.getUint32(16) !== position.checksum1 || v.getUint32(20) !== position.checksum2) return false;
  const state = new Uint32Array(2);
  if (position.frame === 1) {
    state[0] = header.checksum1;
    state[1] = header.checksum2;
  } else {
    const prev = new Uint8Array(WAL_FRAME_HEADER_SIZE);
    const at = frameOffset(position.frame - 1, header.pageSize);
    if (source.read(prev, at, WAL_FRAME_HEADER_SIZE) < WAL_FRAME_HEADER_SIZE) return false;
    const pv = new DataView(prev.buffer);
    state[0] = pv.getUint32(16);
    state[1] = pv.getUint32(20);
  }
  walChecksum(state, frame, 0, 8, header.bigEndian);
  walChecksum(state, frame, WAL_FRAME_HEADER_SIZE, header.pageSize, header.bigEndian);
  return state[0] === position.checksum1 && state[1] === position.checksum2;
}

/** Reads and validates the WAL header from a source; null when absent, short or invalid. */
export function readWalHeader(source: ByteSource): WalHeader | null {
  const bytes = new Uint8Array(WAL_HEADER_SIZE);
  if (source.read(bytes, 0, WAL_HEADER_SIZE) < WAL_HEADER_SIZE) return null;
  try {
    return parseWalHeader(bytes);
  } catch {
    return null;
  }
}

/** A {@linkcode ByteSource} over bytes in memory. */
export function bytesSource(bytes: Uint8Array): ByteSource {
  return {
    read(into, offset, length) {
      if (offset >= bytes.length) return 0;
      const part = bytes.subarray(offset, Math.min(bytes.length, offset + length));
      into.set(part);
      return part.length;
    },
  };
}

