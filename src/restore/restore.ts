/**
 * `walship restore`: rebuilds a database from a replica, exactly, at the
 * latest transaction, a txid, or a point in time (invariants 6 and 7). The
 * file is built beside the output, fsynced and renamed into place; an
 * existing database is replaced only when asked.
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import { ioError } from "../capture/file_source.ts";
import { EarlyWriteback, fsyncDir, tempPathBeside } from "../durable.ts";
import { WalshipError } from "../errors.ts";
import { type Log, silentLog } from "../log.ts";
import { decodeObject } from "../replica/object_format.ts";
import type { ReplicaStorage } from "../replica/storage.ts";
import { streamSegmentBody } from "../replica/segment.ts";
import { rethrowAs, ZstdChunkDecoder } from "../replica/zstd.ts";
import { type ApplyState, applySegment, LastVersions } from "./apply.ts";
import { verifiedPayload, type StreamedObject } from "./object_reader.ts";
import { planRestore, type RestorePlan, type RestoreTarget } from "./plan.ts";

/** Segments downloaded at once by default: many small ones are bound by each request's round trip. */
export const DEFAULT_PARALLELISM = 32;
/** Bytes of segments fetched ahead by default: the memory a restore may hold in downloads. */
export const DEFAULT_AHEAD_BYTES = 64 << 20;

/** Options for {@linkcode restoreDatabase}. */
export interface RestoreOptions {
  storage: ReplicaStorage;
  /** The database file to write. */
  output: string;
  target?: RestoreTarget;
  /** Replace an existing output (and delete its stale -wal and -shm). */
  force?: boolean;
  /** Segments downloaded at once; default 32. */
  parallelism?: number;
  /**
   * Bytes of segments (as listed) fetched ahead of the one being applied, at
   * most; default 64 MiB. Large segments are then fetched fewer at a time.
   * One is always fetched, however large.
   */
  aheadBytes?: number;
  log?: Log;
  /**
   * Called as objects download, with bytes received so far and the total
   * planned (the snapshot object's size plus the segments' sizes, as
   * listed); a last call reports `(total, total)` once the file is complete.
   */
  onProgress?: (done: number, total: number) => void;
}

/** What a restore produced. */
export interface RestoreResult {
  output: string;
  generation: string;
  txid: number;
  /** Unix ms when the restored state was observed. */
  time: number;
  pageSize: number;
  pages: number;
  /** Objects downloaded. */
  objects: number;
}

/**
 * Restores a database.
 *
 * @example
 * ```ts
 * const storage = openReplica("s3://bucket/app");
 * const r = await restoreDatabase({ storage, output: "app.db", target: { txid: 42 } });
 * console.log(`restored txid ${r.txid} of ${r.generation}`);
 * ```
 */
export async function restoreDatabase(options: RestoreOptions): Promise<RestoreResult> {
  const { storage, output } = options;
  const log = options.log ?? silentLog;
  if (!options.force && fs.existsSync(output)) {
    throw new WalshipError("EXISTS", `${output} exists: pass --force to replace it`);
  }
  const plan = await planRestore(storage, options.target);
  if (plan.skipped.length > 0) {
    log.warn(
      `passing over newer generation(s) ${plan.skipped.join(", ")}: no snapshot in them yet ` +
        `(still uploading, or lost); restoring from ${plan.generation}`,
    );
  }
  log.info("restoring", {
    generation: plan.generation,
    snapshot: plan.snapshot.key,
    segments: plan.segments.length,
    output,
  });
  const tmp = tempPathBeside(path.resolve(output));
  let fd: number;
  try {
    fd = fs.openSync(tmp, "w+");
  } catch (err) {
    throw ioError(`cannot write ${output}`, err);
  }
  // One decoder, and so the same two output buffers, for the snapshot and every segment.
  const decoder = new ZstdChunkDecoder();
  try {
    const progress = progressCounter(plan, options.onProgress);
    const state = await restoreSnapshot(storage, plan, fd, decoder, progress);
    await applySegments(storage, plan, fd, state, decoder, {
      parallelism: options.parallelism ?? DEFAULT_PARALLELISM,
      aheadBytes: options.aheadBytes ?? DEFAULT_AHEAD_BYTES,
    }, progress);
    fs.ftruncateSync(fd, state.dbSize * state.pageSize);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = -1;
    if (options.force) {
      fs.rmSync(`${output}-wal`, { force: true });
      fs.rmSync(`${output}-shm`, { force: true });
    }
    fs.renameSync(tmp, output);
    fsyncDir(path.dirname(path.resolve(output)));
    progress?.complete();
    return {
      output,
      generation: plan.generation,
      txid: state.txid,
      time: state.time,
      pageSize: state.pageSize,
      pages: state.dbSize,
      objects: 1 + plan.segments.length,
    };
  } catch (err) {
    if (fd !== -1) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    if (err instanceof WalshipError) throw err;
    throw ioError(`cannot write ${output}`, err);
  } finally {
    decoder.close();
  }
}

/** Counts downloaded bytes against the planned total for `onProgress`. */
interface ProgressCounter {
  add(bytes: number): void;
  complete(): void;
}

function progressCounter(
  plan: RestorePlan,
  onProgress: RestoreOptions["onProgress"],
): ProgressCounter | null {
  if (!onProgress) return null;
  // Segments wholly past a txid target are never downloaded; the others may be.
  const segments = plan.txid === null ? plan.segments : plan.segments.filter((s) => s.firstTxid <= plan.txid!);
  const total = segments.reduce((sum, s) => sum + s.size, plan.snapshot.size);
  let done = 0;
  onProgress(0, total);
  return {
    add(bytes) {
      done += bytes;
      onProgress(Math.min(done, total), total);
    },
    complete: () => onProgress(total, total),
  };
}

function notDecompressing(what: string, cause: unknown): WalshipError {
  return new WalshipError("CORRUPT", `${what} is corrupted (it does not decompress: ${(cause as Error)?.message})`, { cause });
}

async function* counted(
  source: AsyncIterable<Uint8Array>,
  progress: ProgressCounter,
): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    progress.add(chunk.length);
    yield chunk;
  }
}

async function restoreSnapshot(
  storage: ReplicaStorage,
  plan: RestorePlan,
  fd: number,
  decoder: ZstdChunkDecoder,
  progress: ProgressCounter | null,
): Promise<ApplyState> {
  const what = `${storage.location}/${plan.snapshot.key}`;
  const out: StreamedObject = { meta: null };
  let written = 0;
  // The image is written back as it comes, so the restore's final fsync has little left to do.
  const writeback = new EarlyWriteback(fd);
  // Decompressed into the decoder's two buffers, written as each fills.
  const write = (chunk: Uint8Array) => {
    let done = 0;
    while (done < chunk.length) done += fs.writeSync(fd, chunk, done, chunk.length - done, written + done);
    written += chunk.length;
    writeback.wrote(chunk.length);
  };
  try {
    const source = await storage.getStream(plan.snapshot.key);
    const corrupt = (err: unknown) => notDecompressing(what, err);
    for await (const payload of verifiedPayload(progress ? counted(source, progress) : source, what, out)) {
      for (const chunk of rethrowAs(decoder.push(payload), corrupt)) write(chunk);
    }
    for (const chunk of rethrowAs(decoder.end(), corrupt)) write(chunk);
  } catch (err) {
    await writeback.settle().catch(() => {}); // the restore fails anyway
    throw err; // a WalshipError from the replica, or the output's write error (disk full...)
  }
  await writeback.settle();
  const meta = out.meta;
  if (meta?.kind !== "snapshot" || meta.generation !== plan.generation || meta.txid !== plan.snapshot.txid) {
    throw new WalshipError("CORRUPT", `${what} does not hold the snapshot its name says`);
  }
  if (written !== meta.dbSize * meta.pageSize) {
    throw new WalshipError("CORRUPT", `${what} holds ${written} bytes, expected ${meta.dbSize * meta.pageSize}`);
  }
  return {
    position: meta.position,
    bigEndian: meta.bigEndian,
    pageSize: meta.pageSize,
    dbSize: meta.dbSize,
    txid: meta.txid,
    time: meta.time,
  };
}

async function applySegments(
  storage: ReplicaStorage,
  plan: RestorePlan,
  fd: number,
  state: ApplyState,
  decoder: ZstdChunkDecoder,
  window: { parallelism: number; aheadBytes: number },
  progress: ProgressCounter | null,
): Promise<void> {
  const segments = plan.segments;
  // Pages wait here across segments (a page rewritten by many is written once), until the end
  // or until its slots are all taken.
  const pages = new LastVersions(fd, state.pageSize);
  // Segments are fetched ahead, in order: up to `parallelism` at once, and
  // no more than `aheadBytes` (as listed) beyond the one being applied.
  const { parallelism, aheadBytes } = window;
  const fetches: Array<Promise<Uint8Array>> = [];
  let next = 0;
  let ahead = 0;
  const fetchAhead = (applying: number) => {
    while (
      next < segments.length && next - applying < parallelism &&
      (next === applying || ahead + segments[next].size <= aheadBytes)
    ) {
      const p = storage.get(segments[next].key);
      p.catch(() => {}); // awaited in order below; this only silences an early rejection
      fetches[next] = p;
      ahead += segments[next].size;
      next++;
    }
  };
  for (let i = 0; i < segments.length; i++) {
    const entry = segments[i];
    const what = `${storage.location}/${entry.key}`;
    fetchAhead(i);
    const bytes = await fetches[i];
    delete fetches[i];
    ahead -= entry.size;
    fetchAhead(i + 1);
    progress?.add(bytes.length);
    const { meta, payload } = decodeObject(bytes, what);
    if (
      meta.kind !== "segment" || meta.generation !== plan.generation ||
      meta.firstTxid !== entry.firstTxid || meta.lastTxid !== entry.lastTxid
    ) {
      throw new WalshipError("CORRUPT", `${what} does not hold the segment its name says`);
    }
    // Decompressed a chunk at a time as the records reach it (pages are copied out).
    if (applySegment(pages, state, meta, streamSegmentBody(meta, payload, what, decoder), plan, what)) break;
  }
  pages.flush();
}
