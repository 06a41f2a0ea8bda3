/**
 * walship: continuous replication of a live SQLite database (WAL mode) to S3
 * or a directory, and exact restore to the latest commit, a txid, or a point
 * in time. No SQLite binding: walship reads SQLite's files itself.
 *
 * @example
 * ```ts
 * import { replicate, restore } from "walship";
 *
 * const r = await replicate({ db: "app.db", replica: "file:///var/backups/app" });
 * // ... the app writes app.db with any SQLite client ...
 * await r.stop(); // ships everything committed
 *
 * await restore({ replica: "file:///var/backups/app", output: "copy.db" });
 * ```
 *
 * @module
 */

import { inspect as inspectFiles, type InspectReport } from "./capture/inspect.ts";
import { parseDuration } from "./duration.ts";
import type { Log } from "./log.ts";
import { openReplica } from "./replica/open_replica.ts";
import type { ReplicaStorage } from "./replica/storage.ts";
import { Replicator, type ReplicatorEvent } from "./replicate/replicator.ts";
import { restoreDatabase, type RestoreResult } from "./restore/restore.ts";

export { type ErrorCode, WalshipError } from "./errors.ts";
export { createLog, type Log, type LogLevel } from "./log.ts";
export type { InspectReport } from "./capture/inspect.ts";
export type { ObjectInfo, ReplicaStorage } from "./replica/storage.ts";
export {
  type ReplicaStatus,
  Replicator,
  type ReplicatorEvent,
  type ReplicatorStatus,
  type StopResult,
} from "./replicate/replicator.ts";
export type { RestoreResult } from "./restore/restore.ts";
export { describeGenerations, describeSnapshots, type GenerationInfo, type SnapshotInfo } from "./restore/describe.ts";

/** Options for {@linkcode replicate}. */
export interface ReplicateOptions {
  /** Path of the database to replicate. */
  db: string;
  /**
   * `s3://bucket/prefix?…`, `file:///dir`, a directory path, a storage
   * object, or an array of these: every replica gets every commit and keeps
   * its own position.
   */
  replica: string | ReplicaStorage | Array<string | ReplicaStorage>;
  /** At most one upload per interval: ms or a string like "1s". Default 1 s. */
  syncInterval?: number | string;
  /** A fresh snapshot this often: ms or a string like "24h". Default 24 h. */
  snapshotInterval?: number | string;
  /** Local cache directory; default `.<db>-walship` beside the database. */
  cacheDir?: string;
  /** Take part in SQLite's locking so the WAL cannot restart unread (Linux); default true. */
  pin?: boolean;
  /** Where logs go; silent by default. */
  log?: Log;
  /** Subscribed before the start, so it also sees the first snapshot; more with `handle.on()`. */
  onEvent?: (event: ReplicatorEvent) => void;
}

/**
 * Starts replicating `db` and resolves once the first snapshot (or the
 * resumed position) is safe in the local cache. Call `stop()` to ship
 * everything committed and finish.
 *
 * @example
 * ```ts
 * const r = await replicate({ db: "app.db", replica: "s3://bucket/app", syncInterval: "1s" });
 * r.on((e) => e.type === "error" && console.warn(e.replica, e.message));
 * await r.flush();
 * console.log(r.status().uploadedTxid);
 * await r.stop();
 * ```
 */
export async function replicate(options: ReplicateOptions): Promise<Replicator> {
  const replicator = new Replicator(options.db, {
    storage: (Array.isArray(options.replica) ? options.replica : [options.replica]).map(toStorage),
    syncInterval: options.syncInterval === undefined ? undefined : parseDuration(options.syncInterval, "syncInterval"),
    snapshotInterval: options.snapshotInterval === undefined
      ? undefined
      : parseDuration(options.snapshotInterval, "snapshotInterval"),
    cacheDir: options.cacheDir,
    pin: options.pin,
    log: options.log,
  });
  if (options.onEvent) replicator.on(options.onEvent);
  await replicator.start();
  return replicator;
}

/** Options for {@linkcode restore}. */
export interface RestoreOptions {
  /** Where the backup is: a replica URL or a storage object. */
  replica: string | ReplicaStorage;
  /** The database file to write. */
  output: string;
  /** The last transaction observed at or before this time. */
  timestamp?: Date | string | number;
  /** Exactly this transaction. */
  txid?: number;
  /** Replace an existing output. */
  force?: boolean;
  /** Segments downloaded at once; default 32. */
  parallelism?: number;
  /** Bytes of segments fetched ahead of the one being applied, at most; default 64 MiB (one is always fetched). */
  aheadBytes?: number;
}

/**
 * Restores a database from a replica into `output`.
 *
 * @example
 * ```ts
 * const r = await restore({ replica: "s3://bucket/app", output: "app.db", timestamp: "2026-11-21T09:30:00Z" });
 * console.log(r.generation, r.txid, new Date(r.time));
 * ```
 */
export function restore(options: RestoreOptions): Promise<RestoreResult> {
  const t = options.timestamp;
  return restoreDatabase({
    storage: toStorage(options.replica),
    output: options.output,
    target: {
      txid: options.txid,
      timestamp: t === undefined ? undefined : t instanceof Date ? t.getTime() : typeof t === "number" ? t : Date.parse(t),
    },
    force: options.force,
    parallelism: options.parallelism,
    aheadBytes: options.aheadBytes,
  });
}

/**
 * What a database, its WAL and its wal-index hold: the object
 * `walship inspect --json` prints.
 *
 * @example
 * ```ts
 * const report = inspect("app.db");
 * console.log(report.wal?.commits ?? 0);
 * ```
 */
export function inspect(db: string): InspectReport {
  return inspectFiles(db);
}

function toStorage(replica: string | ReplicaStorage): ReplicaStorage {
  return typeof replica === "string" ? openReplica(replica) : replica;
}
