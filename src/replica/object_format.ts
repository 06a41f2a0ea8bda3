/**
 * The envelope every replica object shares (docs/FORMAT.md): a fixed
 * preamble, a JSON metadata block, the zstd payload, and a SHA-256 of all the
 * bytes before it. An object describes itself (kind, generation, txids,
 * positions) and verifies itself (the trailer hash), so a reader needs
 * nothing but the object to trust it.
 *
 *   0  8  magic "walship\0"
 *   8  2  format version (u16 big-endian), 1
 *   10 2  reserved, 0
 *   12 4  metadata length M (u32 big-endian)
 *   16 M  metadata, UTF-8 JSON
 *   ..    payload: zstd
 *   -32   SHA-256 of every byte before it
 *
 * @module
 */

import { createHash } from "node:crypto";
import { byteLength, concatBytes } from "../bytes.ts";
import { type FileRun, forEachRunChunk } from "../durable.ts";
import { WalshipError } from "../errors.ts";
import type { WalPosition } from "../sqlite/wal_scanner.ts";

export const OBJECT_MAGIC = new TextEncoder().encode("walship\0");
/** The newest format this walship writes and reads; it reads every one from 1 up. */
export const FORMAT_VERSION = 2;
export const PREAMBLE_SIZE = 16;
export const HASH_SIZE = 32;

/** Metadata of a segment object: whole transactions `firstTxid..lastTxid`. */
export interface SegmentMeta {
  kind: "segment";
  generation: string;
  pageSize: number;
  firstTxid: number;
  lastTxid: number;
  /** Unix ms when walship observed the first and last transaction. */
  firstTime: number;
  lastTime: number;
  /** WAL position before the first record; must equal the previous object's end. */
  start: WalPosition | null;
  /** WAL position after the last record. */
  end: WalPosition | null;
  /** Checksum byte order of the WAL epoch at `start` (a header record inside may change it). */
  bigEndian: boolean;
  /** Database size in pages after the last transaction. */
  dbSize: number;
  /** Uncompressed payload size in bytes. */
  bodySize: number;
  /**
   * Format 2: the payload is several zstd frames, of these compressed sizes,
   * whose contents join into the body. Absent: one frame (format 1).
   */
  pieces?: number[];
}

/** Metadata of a snapshot object: the whole database image at `txid`. */
export interface SnapshotMeta {
  kind: "snapshot";
  generation: string;
  pageSize: number;
  txid: number;
  /** Unix ms when walship observed the state at `txid`. */
  time: number;
  /** WAL position the image corresponds to; the next segment starts here. */
  position: WalPosition | null;
  /** Checksum byte order of the WAL epoch at `position`. */
  bigEndian: boolean;
  /** Database size in pages; the payload is dbSize × pageSize bytes. */
  dbSize: number;
}

export type ObjectMeta = SegmentMeta | SnapshotMeta;

/**
 * The format an object is written in: 2 only for a segment in pieces, so
 * every other object stays readable by a walship that reads format 1.
 */
function formatOf(meta: ObjectMeta): number {
  return meta.kind === "segment" && meta.pieces ? 2 : 1;
}

/** Bytes that go before the payload: preamble and metadata. */
export function encodePreamble(meta: ObjectMeta): Uint8Array {
  const version = formatOf(meta);
  const json = new TextEncoder().encode(JSON.stringify({ format: version, ...meta }));
  const out = new Uint8Array(PREAMBLE_SIZE + json.length);
  out.set(OBJECT_MAGIC, 0);
  const v = new DataView(out.buffer);
  v.setUint16(8, version);
  v.setUint32(12, json.length);
  out.set(json, PREAMBLE_SIZE);
  return out;
}

/** A whole object around an already-compressed payload (given whole or in parts), with its hash (hex). */
export function encodeObject(meta: ObjectMeta, payload: Uint8Array | Uint8Array[]): { bytes: Uint8Array; hash: string } {
  const { parts, hash } = encodeObjectParts(meta, payload);
  return { bytes: concatBytes(parts), hash };
}

/**
 * The same object as {@linkcode encodeObject}, left in parts (preamble,
 * payload parts, trailer) for a writer that takes parts: a large segment is
 * then never copied into one buffer. A payload part may be a run of a file
 * (a segment builder's spill file), hashed by reading it.
 */
export function encodeObjectParts<P extends Uint8Array | FileRun>(
  meta: ObjectMeta,
  payload: Uint8Array | P[],
): { parts: Array<Uint8Array | P>; size: number; hash: string } {
  const parts: Array<Uint8Array | P> = [encodePreamble(meta), ...(Array.isArray(payload) ? payload : [payload])];
  const hasher = createHash("sha256");
  for (const p of parts) {
    if (p instanceof Uint8Array) hasher.update(p);
    else forEachRunChunk(p, (chunk) => hasher.update(chunk));
  }
  const digest = hasher.digest();
  parts.push(digest);
  return { parts, size: byteLength(parts), hash: digest.toString("hex") };
}

/**
 * Parses the preamble and metadata at the start of an object. `what` names
 * the object in errors. Needs at least the preamble and metadata bytes.
 */
export function decodePreamble(head: Uint8Array, what: string): { meta: ObjectMeta; payloadOffset: number } {
  if (head.length < PREAMBLE_SIZE || !OBJECT_MAGIC.every((b, i) => head[i] === b)) {
    throw new WalshipError("CORRUPT", `${what} is not a walship object (bad magic)`);
  }
  const v = new DataView(head.buffer, head.byteOffset, head.length);
  const version = v.getUint16(8);
  if (version < 1 || version > FORMAT_VERSION) {
    throw new WalshipError("CORRUPT", `${what} has format version ${version}; this walship reads 1 to ${FORMAT_VERSION}`);
  }
  const metaLength = v.getUint32(12);
  if (head.length < PREAMBLE_SIZE + metaLength) {
    throw new WalshipError("CORRUPT", `${what} is truncated (metadata cut short)`);
  }
  let meta: ObjectMeta;
  try {
    meta = JSON.parse(new TextDecoder().decode(head.subarray(PREAMBLE_SIZE, PREAMBLE_SIZE + metaLength)));
  } catch (err) {
    throw new WalshipError("CORRUPT", `${what} has unreadable metadata`, { cause: err });
  }
  if (meta.kind !== "segment" && meta.kind !== "snapshot") {
    throw new WalshipError("CORRUPT", `${what} has unknown kind ${JSON.stringify((meta as { kind: unknown }).kind)}`);
  }
  return { meta, payloadOffset: PREAMBLE_SIZE + metaLength };
}

/**
 * Verifies a whole object held in memory and splits it. Throws CORRUPT when
 * the trailer hash does not match (a corrupted or truncated object).
 */
export function decodeObject(bytes: Uint8Array, what: string): { meta: ObjectMeta; payload: Uint8Array; hash: string } {
  if (bytes.length < PREAMBLE_SIZE + HASH_SIZE) {
    throw new WalshipError("CORRUPT", `${what} is truncated (${bytes.length} bytes)`);
  }
  const bodyEnd = bytes.length - HASH_SIZE;
  const digest = createHash("sha256").update(bytes.subarray(0, bodyEnd)).digest();
  if (!digest.equals(bytes.subarray(bodyEnd))) {
    throw new WalshipError("CORRUPT", `${what} failed its hash check (corrupted or truncated)`);
  }
  const { meta, payloadOffset } = decodePreamble(bytes.subarray(0, bodyEnd), what);
  return { meta, payload: bytes.subarray(payloadOffset, bodyEnd), hash: digest.toString("hex") };
}
