/**
 * Where objects live in a replica (docs/FORMAT.md). Every key sorts by time
 * and txid, so a restore plans from listings alone:
 *
 *   <generation>/snapshot-<txid>-<time>.wsnap
 *   <generation>/segment-<firstTxid>-<lastTxid>-<firstTime>-<lastTime>.wseg
 *
 * txids are 16 decimal digits, times Unix ms in 13 digits, both zero-padded.
 * Generation ids start with their UTC creation time, so they sort by it.
 * Objects sit one level below the generation so that a delimiter listing of
 * the root finds every generation (s3rver drops deeper common prefixes).
 *
 * @module
 */

import { randomBytes } from "node:crypto";

const GENERATION_RE = /^(\d{8}T\d{9}Z)-([0-9a-f]{8})$/;
const SNAPSHOT_RE = /^snapshot-(\d{16})-(\d{13})\.wsnap$/;
const SEGMENT_RE = /^segment-(\d{16})-(\d{16})-(\d{13})-(\d{13})\.wseg$/;

/** A snapshot object named in a listing. */
export interface SnapshotEntry {
  kind: "snapshot";
  generation: string;
  key: string;
  size: number;
  txid: number;
  time: number;
}

/** A segment object named in a listing. */
export interface SegmentEntry {
  kind: "segment";
  generation: string;
  key: string;
  size: number;
  firstTxid: number;
  lastTxid: number;
  firstTime: number;
  lastTime: number;
}

/** A new generation id for a generation created at `now` (Unix ms). */
export function newGenerationId(now = Date.now()): string {
  const iso = new Date(now).toISOString(); // 2026-11-21T11:43:00.123Z
  const stamp = iso.replace(/[-:]/g, "").replace(".", "");
  return `${stamp}-${randomBytes(4).toString("hex")}`;
}

/** True for a string shaped like a generation id. */
export function isGenerationId(name: string): boolean {
  return GENERATION_RE.test(name);
}

/** Unix ms at which a generation was created, read from its id. */
export function generationTime(id: string): number {
  const m = GENERATION_RE.exec(id);
  if (!m) return NaN;
  const s = m[1];
  return Date.UTC(+s.slice(0, 4), +s.slice(4, 6) - 1, +s.slice(6, 8), +s.slice(9, 11), +s.slice(11, 13), +s.slice(13, 15), +s.slice(15, 18));
}

const pad = (n: number, width: number) => String(n).padStart(width, "0");

/** Key of a snapshot object. */
export function snapshotKey(generation: string, txid: number, time: number): string {
  return `${generation}/snapshot-${pad(txid, 16)}-${pad(time, 13)}.wsnap`;
}

/** Key of a segment object. */
export function segmentKey(
  generation: string,
  s: { firstTxid: number; lastTxid: number; firstTime: number; lastTime: number },
): string {
  return `${generation}/segment-${pad(s.firstTxid, 16)}-${pad(s.lastTxid, 16)}-${pad(s.firstTime, 13)}-${pad(s.lastTime, 13)}.wseg`;
}

/** Reads a listed key of a generation; null for keys walship did not write. */
export function parseObjectKey(
  generation: string,
  key: string,
  size: number,
): SnapshotEntry | SegmentEntry | null {
  const name = key.slice(generation.length + 1);
  let m = SNAPSHOT_RE.exec(name);
  if (m) return { kind: "snapshot", generation, key, size, txid: +m[1], time: +m[2] };
  m = SEGMENT_RE.exec(name);
  if (m) {
    return {
      kind: "segment",
      generation,
      key,
      size,
      firstTxid: +m[1],
      lastTxid: +m[2],
      firstTime: +m[3],
      lastTime: +m[4],
    };
  }
  return null;
}
