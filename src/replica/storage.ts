/**
 * The one small interface every replica backend implements. Keys are
 * relative to the replica's root (the S3 prefix or the directory), use `/`
 * as separator and never start with it. Backends are one file each
 * (`s3.ts`, `file.ts`); `open_replica.ts` picks one from a URL.
 *
 * @module
 */

/** One stored object as a listing reports it. */
export interface ObjectInfo {
  /** Key relative to the replica root. */
  key: string;
  /** Size in bytes. */
  size: number;
}

/** A body to store: bytes in memory, or a local file streamed from disk. */
export type PutBody = Uint8Array | { path: string; size: number };

/** Counters a backend keeps, for status, metrics and benchmarks. */
export interface StorageStats {
  puts: number;
  gets: number;
  lists: number;
  deletes: number;
  bytesUp: number;
  bytesDown: number;
}

/**
 * Counters at zero, for a backend just opened.
 *
 * @example
 * ```ts
 * const stats = emptyStats();
 * stats.puts++;
 * ```
 */
export function emptyStats(): StorageStats {
  return { puts: 0, gets: 0, lists: 0, deletes: 0, bytesUp: 0, bytesDown: 0 };
}

/** A place that holds replica objects. */
export interface ReplicaStorage {
  /** Where this is, for messages: `s3://bucket/prefix` or `file:///dir`; never holds secrets. */
  readonly location: string;
  /** Counters since this storage was opened. */
  readonly stats: StorageStats;
  /** Stores `body` at `key`, replacing any object there. Atomic: readers see all of it or none. */
  put(key: string, body: PutBody): Promise<void>;
  /** The whole object at `key`. Throws WalshipError NOT_FOUND when absent. */
  get(key: string): Promise<Uint8Array>;
  /** The object at `key` as a stream of chunks, for large objects. NOT_FOUND when absent. */
  getStream(key: string): Promise<AsyncIterable<Uint8Array>>;
  /**
   * Every object whose key starts with `prefix` (and sorts after `startAfter`, when
   * given), sorted by key, all pages gathered.
   */
  list(prefix: string, options?: { startAfter?: string }): Promise<ObjectInfo[]>;
  /**
   * The distinct next path segments below `prefix` (which ends in `/` or is empty):
   * for keys `a/x/1` and `a/y/2` under `a/`, returns `["x", "y"]`, sorted.
   */
  listChildren(prefix: string): Promise<string[]>;
  /** Deletes these keys; absent keys are not an error. */
  delete(keys: string[]): Promise<void>;
}
