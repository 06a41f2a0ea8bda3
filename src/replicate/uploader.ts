/**
 * Uploads cached objects to the replica strictly in journal order, one at a
 * time, retrying with capped exponential backoff. An upload repeated after a
 * crash writes the same bytes to the same key, so it is harmless. While the
 * replica is down, objects wait durably in the cache; one warning says so,
 * and one line says when it is back.
 *
 * @module
 */

import { errorMessage } from "../errors.ts";
import type { CachedObject, ObjectCache } from "../cache/object_cache.ts";
import type { Log } from "../log.ts";
import type { ReplicaStorage } from "../replica/storage.ts";

/** The retry policy, as data. */
export interface RetryPolicy {
  /** First wait after a failure, ms. */
  initialMs: number;
  /** Longest wait between attempts, ms. */
  maxMs: number;
  /** Repeat the outage warning this often while it lasts, ms. */
  warnEveryMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { initialMs: 250, maxMs: 5_000, warnEveryMs: 30_000 };

/** Ordered uploader for one replica: works through the objects that replica lacks. */
export class Uploader {
  /** The replica's name in the cache. */
  readonly name: string;
  #cache: ObjectCache;
  #storage: ReplicaStorage;
  #log: Log;
  #retry: RetryPolicy;
  #onUploaded: (obj: CachedObject) => void;
  #onError: (message: string) => void;
  #wake: (() => void) | null = null;
  #stopped = false;
  #running: Promise<void> | null = null;
  #downSince: number | null = null;
  #lastWarn = 0;
  #idleWaiters: Array<() => void> = [];
  /** Uploads that failed, since start. */
  errors = 0;
  /** Objects uploaded, since start. */
  uploads = 0;
  /** The last upload error, while the replica is failing. */
  lastError: string | null = null;

  constructor(
    cache: ObjectCache,
    storage: ReplicaStorage,
    log: Log,
    options: {
      name?: string;
      retry?: RetryPolicy;
      onUploaded?: (obj: CachedObject) => void;
      onError?: (message: string) => void;
    } = {},
  ) {
    this.name = options.name ?? cache.replicas[0];
    this.#cache = cache;
    this.#storage = storage;
    this.#log = log;
    this.#retry = options.retry ?? DEFAULT_RETRY;
    this.#onUploaded = options.onUploaded ?? (() => {});
    this.#onError = options.onError ?? (() => {});
  }

  /** Starts the upload loop. */
  start(): void {
    this.#running ??= this.#run();
  }

  /** Tells the loop that the cache has something new. */
  notify(): void {
    this.#wake?.();
  }

  /** Resolves when nothing waits for upload. */
  idle(): Promise<void> {
    if (!this.#cache.next(this.name)) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Stops after the current attempt; objects left stay in the cache for next time. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.notify();
    await this.#running;
  }

  async #run(): Promise<void> {
    let backoff = this.#retry.initialMs;
    while (!this.#stopped) {
      const next = this.#cache.next(this.name);
      if (!next) {
        for (const resolve of this.#idleWaiters.splice(0)) resolve();
        await this.#sleep(60_000);
        continue;
      }
      try {
        await this.#storage.put(next.key, { path: this.#cache.objectPath(next.hash), size: next.size });
        this.#cache.markUploaded(next.seq, this.name);
        this.uploads++;
        this.#onUploaded(next);
        backoff = this.#retry.initialMs;
        if (this.#downSince !== null) {
          const waited = ((Date.now() - this.#downSince) / 1000).toFixed(1);
          this.#log.info(`replica reachable again after ${waited}s; uploading waiting objects`, {
            replica: this.#storage.location,
            waiting: this.#cache.pending(this.name).length,
          });
          this.#downSince = null;
          this.lastError = null;
        }
      } catch (err) {
        this.errors++;
        this.lastError = errorMessage(err);
        this.#onError(this.lastError);
        const now = Date.now();
        if (this.#downSince === null || now - this.#lastWarn >= this.#retry.warnEveryMs) {
          this.#log.warn(`upload failed, will retry; objects wait in the local cache: ${this.lastError}`, {
            replica: this.#storage.location,
            waiting: this.#cache.pending(this.name).length,
          });
          this.#lastWarn = now;
        }
        this.#downSince ??= now;
        await this.#sleep(backoff);
        backoff = Math.min(backoff * 2, this.#retry.maxMs);
      }
    }
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      this.#wake = done;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    });
  }
}
