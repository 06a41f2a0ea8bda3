/**
 * `walship replicate`: follows one database's WAL and ships every committed
 * transaction to a replica (DESIGN.md data flow):
 *
 *   watch → WalFollower (validated commits) → SegmentBuilder (one object per
 *   sync interval) → ObjectCache (durable, journaled) → Uploader (ordered) → replica
 *
 * A generation starts with a consistent snapshot; later snapshots come every
 * snapshot interval. When the follower cannot prove that no commit went by
 * unread, the replica is brought back to the exact current state with a new
 * generation and a snapshot, and the reason is logged at warn level
 * (invariant 4).
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import { ObjectCache } from "../cache/object_cache.ts";
import { type ImageView, readConsistentImage } from "../capture/snapshot_reader.ts";
import { type FollowResult, WalFollower } from "../capture/wal_follower.ts";
import { readHead } from "../capture/file_source.ts";
import { tempPathBeside } from "../durable.ts";
import { errorMessage, WalshipError } from "../errors.ts";
import { type Log, silentLog } from "../log.ts";
import { type FileLocks, loadFileLocks } from "../runtime.ts";
import { newGenerationId, snapshotKey, segmentKey } from "../replica/layout.ts";
import type { SnapshotMeta } from "../replica/object_format.ts";
import type { ReplicaStorage } from "../replica/storage.ts";
import { DB_HEADER_SIZE, parseDbHeader } from "../sqlite/db_header.ts";
import type { WalPosition } from "../sqlite/wal_scanner.ts";
import { PageTable } from "../cache/page_table.ts";
import { listGeneration, listGenerations } from "../restore/plan.ts";
import { restoreDatabase } from "../restore/restore.ts";
import { diffImage, replayTable, tableFromImage } from "./page_table_sync.ts";
import { PinKeeper } from "./pin_keeper.ts";
import { enforceRetention } from "./retention.ts";
import { SegmentBuilder } from "./segment_builder.ts";
import { writeSnapshotObject } from "./snapshot_object.ts";
import { DEFAULT_RETRY, type RetryPolicy, Uploader } from "./uploader.ts";
import { type Watch, watchDatabase } from "./watcher.ts";

/** Options for {@linkcode Replicator}. */
export interface ReplicatorOptions {
  /** Where the replica lives; several replicas each keep their own position. */
  storage: ReplicaStorage | ReplicaStorage[];
  /** The local cache directory; default `.<db name>-walship` beside the database. */
  cacheDir?: string;
  /** At most one upload per this many ms; default 1000. */
  syncInterval?: number;
  /** A new snapshot after this many ms; default 24 h. */
  snapshotInterval?: number;
  /** Poll the WAL at least this often, ms; default min(syncInterval, 1000). */
  pollInterval?: number;
  /** Upload retry policy. */
  retry?: RetryPolicy;
  /** Take part in SQLite's locking so the WAL cannot outrun walship (Linux); default true. */
  pin?: boolean;
  log?: Log;
  /**
   * Forget states older than this many ms, after each snapshot reaches a
   * replica (see retention.ts); by replica location, or one value for all.
   * Default: keep everything.
   */
  retention?: number | Record<string, number | undefined>;
  /** Called while a snapshot is written: image bytes read of the total. Returns a finisher, or null. */
  snapshotProgress?: () => { update: (done: number, total: number) => void; finish: () => void } | null;
}

/** Where one replica stands. */
export interface ReplicaStatus {
  /** The replica's location (`s3://bucket/prefix` or `file:///dir`). */
  replica: string;
  /** Last txid known to be in this replica. */
  uploadedTxid: number;
  /** Objects and bytes this replica does not have yet. */
  pendingObjects: number;
  pendingBytes: number;
  /** Objects uploaded and uploads failed since start. */
  uploads: number;
  uploadErrors: number;
  /** The last upload error, while this replica is failing. */
  lastError: string | null;
  /** Seconds since the oldest transaction this replica lacks was observed; 0 when it has them all. */
  lagSeconds: number;
}

/** What the replicator is doing, for status, metrics and tests. */
export interface ReplicatorStatus {
  db: string;
  /** The first replica's location. */
  replica: string;
  generation: string | null;
  /** Last txid captured locally. */
  txid: number;
  /** Last txid known to be in every replica. */
  uploadedTxid: number;
  /** Objects (and their bytes) some replica still lacks. */
  pendingObjects: number;
  pendingBytes: number;
  snapshots: number;
  segments: number;
  repairs: number;
  /** Upload failures over all replicas. */
  uploadErrors: number;
  /** The first failing replica's last error. */
  lastError: string | null;
  /** Heals: transactions of changed pages shipped when continuity was lost. */
  heals: number;
  /** "held (READ_LOCK n)", "let go", "unpinned: …", "waiting for the -shm". */
  pin: string;
  /** Whether walship holds a read slot now. */
  pinned: boolean;
  /** Size of the -wal file in bytes (0 when absent). */
  walSize: number;
  /** The largest lag over the replicas. */
  lagSeconds: number;
  /** Whether start() has finished and stop() has not begun. */
  started: boolean;
  replicas: ReplicaStatus[];
}

/** What {@linkcode Replicator.stop} left behind. */
export interface StopResult {
  /** Objects still waiting in the local cache (0 when everything reached the replica). */
  pendingObjects: number;
  pendingBytes: number;
}

/** Events a replicator reports. */
export type ReplicatorEvent =
  | { type: "snapshot"; generation: string; txid: number; reason: string }
  | { type: "segment"; generation: string; firstTxid: number; lastTxid: number }
  | { type: "sync"; replica: string; key: string; txid: number }
  | { type: "error"; replica: string; message: string }
  | { type: "retention"; replica: string; generations: number; objects: number }
  | { type: "repair"; reason: string }
  | { type: "heal"; reason: string; txid: number; pages: number; bytes: number };

/** A heal holds the changed pages in memory; past this, a new generation's snapshot (streamed) is used. */
const MAX_HEAL_BYTES = 256 << 20;

/** A snapshot object written to a temporary file, not yet in the cache. */
interface WrittenSnapshot {
  path: string;
  hash: string;
  meta: SnapshotMeta;
}
/**
 * A segment is cut before its interval ends only once it holds this many
 * bytes of records: a bound on what waits in memory, kept high so that one
 * PUT per sync interval stays the rule (DESIGN.md, "Storage and cost";
 * docs/DECISIONS.md, "One upload per sync interval").
 */
const SEGMENT_CUT_BYTES = 64 << 20;

/** What a replica held at start. */
interface RemoteState {
  name: string;
  generations: string[];
  maxTxid: number;
}

/** Default cache directory for a database: `.<name>-walship` beside it. */
export function defaultCacheDir(db: string): string {
  const abs = path.resolve(db);
  return path.join(path.dirname(abs), `.${path.basename(abs)}-walship`);
}

/** One replica and its uploader. */
interface Target {
  storage: ReplicaStorage;
  /** Its name in the cache: the location. */
  name: string;
  uploader: Uploader;
  uploadedTxid: number;
  retention?: number;
  /** The retention pass running, if any. */
  pruning: Promise<void> | null;
}

/** Replicates one database to one or more replicas. */
export class Replicator {
  readonly db: string;
  #storages: ReplicaStorage[];
  #targets: Target[] = [];
  #cacheDir: string;
  #syncInterval: number;
  #snapshotInterval: number;
  #pollInterval: number;
  #log: Log;
  #retry: RetryPolicy;
  #cache!: ObjectCache;
  #follower!: WalFollower;
  #builder!: SegmentBuilder;
  #watch: Watch | null = null;
  #generation: string | null = null;
  #pageSize = 0;
  #lastFlush = 0;
  #lastSnapshot = 0;
  #repairReason: string | null = null;
  /** Continuity was lost and the heal failed (it throws when no consistent image can be taken): try again. */
  #healReason: string | null = null;
  #stopping = false;
  #loop: Promise<void> | null = null;
  #wake: (() => void) | null = null;
  /** Set when the WAL restarted between rounds: the next round starts at once. */
  #readNow = false;
  #listeners: Array<(e: ReplicatorEvent) => void> = [];
  #stats = { snapshots: 0, segments: 0, repairs: 0, heals: 0 };
  #pinEnabled: boolean;
  #snapshotProgress: ReplicatorOptions["snapshotProgress"];
  #retention: ReplicatorOptions["retention"];
  #pinKeeper!: PinKeeper;
  /** libc's locks, for snapshots read in place; null: snapshots copy the database first. */
  #locks: FileLocks | null = null;
  /** Page hashes of the replicated state; null when unknown (healing then needs a new generation). */
  #table: PageTable | null = null;
  #tableSavedAt = 0;

  constructor(db: string, options: ReplicatorOptions) {
    this.db = path.resolve(db);
    this.#storages = Array.isArray(options.storage) ? options.storage : [options.storage];
    if (this.#storages.length === 0) throw new WalshipError("BAD_ARGUMENT", `no replica given for ${this.db}`);
    const names = this.#storages.map((s) => s.location);
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice) throw new WalshipError("BAD_ARGUMENT", `replica ${twice} is given twice for ${this.db}`);
    this.#cacheDir = options.cacheDir ?? defaultCacheDir(db);
    this.#syncInterval = options.syncInterval ?? 1000;
    this.#snapshotInterval = options.snapshotInterval ?? 24 * 3600_000;
    this.#pollInterval = options.pollInterval ?? Math.min(this.#syncInterval, 1000);
    this.#log = options.log ?? silentLog;
    this.#retry = options.retry ?? DEFAULT_RETRY;
    this.#pinEnabled = options.pin ?? true;
    this.#snapshotProgress = options.snapshotProgress;
    this.#retention = options.retention;
  }

  /** Subscribes to events; returns the unsubscribe function. */
  on(listener: (e: ReplicatorEvent) => void): () => void {
    this.#listeners.push(listener);
    return () => void (this.#listeners = this.#listeners.filter((l) => l !== listener));
  }

  /**
   * Starts replicating: waits for the database to exist, checks it, resumes
   * or starts a generation, and runs until {@linkcode stop}. Throws for a
   * database that cannot be replicated or a replica that refuses access.
   */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  #starting: Promise<void> | null = null;
  #stopped: Promise<StopResult> | null = null;

  async #start(): Promise<void> {
    await this.#waitForDatabase();
    this.#pinKeeper = await PinKeeper.create(this.db, this.#pinEnabled, this.#log);
    const locks = await loadFileLocks();
    this.#locks = typeof locks === "string" ? null : locks;
    await this.#pinKeeper.start();
    // The WAL restarted in a let-go seen between rounds: read its old tail now.
    this.#pinKeeper.onRestart = () => {
      this.#readNow = true;
      this.#wake?.();
    };
    this.#cache = ObjectCache.open(this.#cacheDir, this.#storages.map((s) => s.location));
    const remotes = [];
    for (const storage of this.#storages) remotes.push(await this.#probeReplica(storage));
    for (const storage of this.#storages) {
      const retention = typeof this.#retention === "number" ? this.#retention : this.#retention?.[storage.location];
      const target: Target = { storage, name: storage.location, uploadedTxid: 0, uploader: null!, retention, pruning: null };
      target.uploader = new Uploader(this.#cache, storage, this.#log, {
        name: target.name,
        retry: this.#retry,
        onUploaded: (obj) => {
          target.uploadedTxid = Math.max(target.uploadedTxid, obj.txid);
          this.#emit({ type: "sync", replica: target.name, key: obj.key, txid: obj.txid });
          if (obj.kind === "snapshot") this.#prune(target);
        },
        onError: (message) => this.#emit({ type: "error", replica: target.name, message }),
      });
      this.#targets.push(target);
    }
    for (const t of this.#targets) t.uploader.start();
    await this.#resumeOrBegin(remotes);
    for (const t of this.#targets) this.#prune(t);
    this.#watch = watchDatabase(this.db, this.#pollInterval, (event) => {
      // Pinned at the file event that may show a new -shm, not at the next round:
      // a writer that opens the database fills 1,000 pages (SQLite's default
      // checkpoint) and restarts the WAL within milliseconds, and a heal would
      // follow. The timer's ticks leave it to the round, which tries anyway.
      if (event && !this.#stopping) this.#pinKeeper.ensurePinned();
      this.#wake?.();
    });
    this.#loop = this.#run();
  }

  /** Ships everything committed so far and waits until the replica has it. */
  async flush(): Promise<void> {
    await this.#step(true);
    await this.#idle();
  }

  /** Resolves when every replica has every object. */
  #idle(): Promise<void> {
    return Promise.all(this.#targets.map((t) => t.uploader.idle())).then(() => {});
  }

  /**
   * Runs `fn` with the pin let go, after reading and caching every commit.
   * For an app that runs walship in its own thread and calls a RESTART or
   * TRUNCATE checkpoint synchronously: the checkpoint waits for the read
   * slot, and a blocked thread cannot let it go by itself.
   *
   * @example
   * ```ts
   * await replicator.withPinReleased(() => db.exec("PRAGMA wal_checkpoint(TRUNCATE)"));
   * ```
   */
  async withPinReleased<T>(fn: () => T | Promise<T>): Promise<T> {
    let result!: T;
    const round = this.#stepping.then(async () => {
      await this.#roundPinned(true);
      this.#pinKeeper.letGoNow();
      try {
        result = await fn();
      } finally {
        this.#pinKeeper.holdNow();
      }
    });
    this.#stepping = round.catch(() => {});
    await round;
    return result;
  }

  /**
   * Stops: reads the WAL one last time, ships everything committed, waits for
   * the uploads (unless `drain` is false; at most `timeout` ms when given),
   * and releases the files. Objects not uploaded by then stay in the local
   * cache and go up at the next start; the result says how many.
   */
  stop(options: { drain?: boolean; timeout?: number } = {}): Promise<StopResult> {
    this.#stopped ??= this.#stop(options);
    return this.#stopped;
  }

  async #stop(options: { drain?: boolean; timeout?: number }): Promise<StopResult> {
    this.#stopping = true;
    this.#wake?.();
    // Stopped while starting: start() gives up if it is still waiting for the
    // database, and otherwise finishes first; never started: nothing to stop.
    if (!(await this.#starting?.then(() => true, () => false))) return { pendingObjects: 0, pendingBytes: 0 };
    await this.#loop;
    this.#watch?.close();
    try {
      await this.#step(true);
    } catch (err) {
      this.#log.error(`final sync failed: ${errorMessage(err)}`);
    }
    if (options.drain ?? true) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#idle(),
        new Promise<void>((resolve) => {
          if (options.timeout !== undefined) timer = setTimeout(resolve, options.timeout);
        }),
      ]);
      clearTimeout(timer);
    }
    await Promise.all(this.#targets.map((t) => t.uploader.stop()));
    await Promise.all(this.#targets.map((t) => t.pruning));
    const result = { pendingObjects: this.#cache.pending().length, pendingBytes: this.#cache.pendingBytes() };
    this.#saveTable(true);
    this.#pinKeeper.close();
    this.#follower.close();
    this.#builder?.close();
    this.#cache.close();
    return result;
  }

  /** A builder starting after `txid` at `position`, in place of the last one (whose spill file goes). */
  #newBuilder(txid: number, position: WalPosition | null, dbSize: number, bigEndian: boolean): void {
    this.#builder?.close();
    this.#builder = new SegmentBuilder(txid, position, dbSize, bigEndian, {
      spillPath: path.join(this.#cacheDir, "segment-spill"),
    });
  }

  /** A snapshot of counters and positions. */
  status(): ReplicatorStatus {
    const now = Date.now();
    const pendingFrom = this.#builder && !this.#builder.empty ? this.#builder.firstTime : null;
    const replicas: ReplicaStatus[] = this.#storages.map((storage) => {
      const t = this.#targets.find((t) => t.storage === storage);
      const pending = this.#cache && t ? this.#cache.pending(t.name) : [];
      const oldest = pending[0]?.time ?? pendingFrom;
      return {
        replica: storage.location,
        uploadedTxid: t?.uploadedTxid ?? 0,
        pendingObjects: pending.length,
        pendingBytes: this.#cache && t ? this.#cache.pendingBytes(t.name) : 0,
        uploads: t?.uploader.uploads ?? 0,
        uploadErrors: t?.uploader.errors ?? 0,
        lastError: t?.uploader.lastError ?? null,
        lagSeconds: oldest === null || oldest === undefined ? 0 : Math.max(0, (now - oldest) / 1000),
      };
    });
    let walSize = 0;
    try {
      walSize = fs.statSync(this.db + "-wal").size;
    } catch {
      // no WAL yet, or it was just removed
    }
    return {
      db: this.db,
      replica: this.#storages[0].location,
      generation: this.#generation,
      txid: this.#builder?.txid ?? 0,
      uploadedTxid: Math.min(...replicas.map((r) => r.uploadedTxid)),
      pendingObjects: this.#cache?.pending().length ?? 0,
      pendingBytes: this.#cache?.pendingBytes() ?? 0,
      snapshots: this.#stats.snapshots,
      segments: this.#stats.segments,
      repairs: this.#stats.repairs,
      uploadErrors: replicas.reduce((n, r) => n + r.uploadErrors, 0),
      lastError: replicas.find((r) => r.lastError)?.lastError ?? null,
      heals: this.#stats.heals,
      pin: this.#pinKeeper?.state ?? "not started",
      pinned: this.#pinKeeper?.holding ?? false,
      walSize,
      lagSeconds: Math.max(...replicas.map((r) => r.lagSeconds)),
      started: this.#loop !== null && !this.#stopping,
      replicas,
    };
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      try {
        await this.#step(false);
      } catch (err) {
        this.#log.error(`replication step failed, will retry: ${errorMessage(err)}`, { db: this.db });
      }
      if (this.#stopping) break;
      if (this.#readNow) {
        this.#readNow = false;
        continue;
      }
      let waitMs = this.#builder.empty
        ? this.#pollInterval
        : Math.max(0, this.#lastFlush + this.#syncInterval - Date.now());
      // Pinned, look often for a checkpointer waiting on the slot: a cheap look
      // at the locks, and a whole round only when one waits.
      let glance = false;
      if (this.#pinKeeper.enabled && waitMs > 100) {
        waitMs = 100;
        glance = true;
      }
      for (;;) {
        const woken = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), waitMs);
          // File events come in bursts; a short pause lets a burst settle into one read.
          this.#wake = () => {
            clearTimeout(timer);
            setTimeout(() => resolve(true), 5);
          };
        });
        this.#wake = null;
        if (woken || !glance || this.#stopping || this.#pinKeeper.needsRound()) break;
        waitMs = Math.min(100, Math.max(0, this.#lastRound + this.#pollInterval - Date.now()));
        if (waitMs === 0) break;
      }
    }
  }

  /** When the last whole round began (Date.now()). */
  #lastRound = 0;

  #stepping: Promise<void> = Promise.resolve();

  /**
   * Runs one round at a time: flush() and the loop would otherwise interleave
   * at the awaits of a snapshot, and two generations would share a txid.
   */
  #step(force: boolean): Promise<void> {
    const round = this.#stepping.then(() => this.#round(force));
    this.#stepping = round.catch(() => {});
    return round;
  }

  /** One round: read the WAL, repair if continuity is lost, flush when due, snapshot when due. */
  async #round(force: boolean): Promise<void> {
    // Pinned before the WAL is read, so what this round reads cannot vanish under it.
    this.#pinKeeper.ensurePinned();
    this.#lastRound = Date.now();
    for (let again = true; again;) {
      try {
        await this.#roundPinned(force);
      } finally {
        // A round that ends with nothing left in the builder has cut its segment (or had none to cut).
        again = await this.#pinKeeper.tick(this.#follower, {
          segmentDue: this.#builder.empty,
          flushAll: () => this.#flushSegment(),
          catchUp: () => this.#roundPinned(true),
        });
      }
    }
  }

  async #roundPinned(force: boolean): Promise<void> {
    if (this.#repairReason) {
      await this.#beginGeneration(this.#repairReason);
      return;
    }
    if (this.#healReason) {
      await this.#repair(this.#healReason);
      return;
    }
    for (;;) {
      const result = this.#follower.poll();
      if (result.lost) {
        this.#stats.repairs++;
        this.#emit({ type: "repair", reason: result.lost });
        this.#flushSegment();
        await this.#repair(result.lost);
        return;
      }
      this.#ingest(result);
      if (!result.more) break;
      this.#pinKeeper.look();
      if (this.#builder.size >= SEGMENT_CUT_BYTES) this.#flushSegment();
    }
    if (!this.#builder.empty && (force || Date.now() - this.#lastFlush >= this.#syncInterval)) {
      this.#flushSegment();
    }
    if (!force && Date.now() - this.#lastSnapshot >= this.#snapshotInterval && this.#builder.txid > this.#snapshotTxid) {
      await this.#periodicSnapshot();
    }
  }

  /**
   * Heals, or starts a new generation when a heal cannot work. The follower
   * has given up its position by then, so until one of them succeeds (a
   * consistent image can take several tries while the WAL keeps
   * restarting), every round tries again: otherwise the replica would stay
   * behind, unnoticed, for as long as nothing new is committed.
   */
  async #repair(reason: string): Promise<void> {
    this.#healReason = reason;
    if (await this.#heal(reason)) {
      this.#healReason = null;
      return;
    }
    this.#healReason = null;
    this.#log.warn(`continuity lost: ${reason}; starting a new generation from a snapshot`, { db: this.db });
    this.#repairReason = reason;
    await this.#beginGeneration(reason);
  }

  /**
   * Brings the replica to the live state within the same generation: hashes
   * the pages of a consistent image and ships those that differ from the
   * replicated state as one transaction (invariant 4). False when it cannot
   * (no page table, another page size, or more changed pages than fit in
   * memory): the caller then starts a new generation.
   */
  async #heal(reason: string): Promise<boolean> {
    const table = this.#table;
    const decline = (why: string) => {
      this.#log.info(`cannot heal: ${why}`, { db: this.db });
      return false;
    };
    if (!table || !this.#generation) return decline("no page table of the replicated state");
    if (table.txid !== this.#builder.txid) return decline(`the page table is at txid ${table.txid}, not ${this.#builder.txid}`);
    this.#follower.rebase(null, 0, 0);
    const { image, changed } = await this.#readImage(true, async (image) => ({
      image,
      changed: image.pageSize === table.pageSize ? await diffImage(image.chunks(), table, MAX_HEAL_BYTES) : null,
    }));
    if (image.pageSize !== table.pageSize) return decline(`the page size changed to ${image.pageSize}`);
    if (!changed) return decline(`more than ${MAX_HEAL_BYTES >> 20} MiB of pages changed: a snapshot is the better base`);
    this.#builder.addHeal({
      dbSize: image.dbSize,
      time: Date.now(),
      position: image.position,
      bigEndian: image.bigEndian,
      pages: changed,
    });
    const txid = this.#builder.txid;
    this.#flushSegment();
    this.#saveTable(true);
    const bytes = changed.length * image.pageSize;
    this.#stats.heals++;
    this.#log.warn(`continuity lost: ${reason}; healed by shipping the ${changed.length} page(s) that differ`, {
      db: this.db,
      generation: this.#generation,
      txid,
      pages: changed.length,
      of: image.dbSize,
      bytes,
    });
    this.#emit({ type: "heal", reason, txid, pages: changed.length, bytes });
    return true;
  }

  /** Saves the page table when due (every 10 s), or now. */
  #saveTable(now: boolean): void {
    if (!this.#table || (!now && Date.now() - this.#tableSavedAt < 10_000)) return;
    try {
      this.#table.save(this.#tablePath());
      this.#tableSavedAt = Date.now();
    } catch (err) {
      this.#log.warn(`cannot save the page table: ${errorMessage(err)}`, { db: this.db });
    }
  }

  #tablePath(): string {
    return path.join(this.#cacheDir, "pages");
  }

  /**
   * The page table for the state at `txid` of the current generation: the
   * saved one brought up to date from the segments shipped since, or
   * rebuilt by restoring the (first) replica into a temporary file. Null when
   * neither works (healing then needs a new generation).
   */
  async #loadTable(txid: number): Promise<PageTable | null> {
    const generation = this.#generation!;
    const primary = this.#targets[0];
    try {
      const saved = PageTable.load(this.#tablePath());
      if (saved && saved.generation === generation && saved.pageSize === this.#pageSize && saved.txid <= txid) {
        const table = await replayTable(saved, txid, primary.storage, this.#cache.pending(primary.name), this.#cache);
        if (table) return table;
      }
      if (this.#cache.pending(primary.name).some((o) => o.generation === generation)) return null;
      const tmp = this.#tempPath();
      try {
        const r = await restoreDatabase({ storage: primary.storage, output: tmp, target: { generation } });
        if (r.txid !== txid) return null;
        this.#log.info("rebuilt the page table from the replica", { db: this.db, generation, txid });
        return await tableFromImage(tmp, r.pageSize, r.pages, generation, txid);
      } finally {
        fs.rmSync(tmp, { force: true });
      }
    } catch (err) {
      this.#log.warn(`page table unavailable (${errorMessage(err)}): a heal would start a new generation`, { db: this.db });
      return null;
    }
  }

  #snapshotTxid = 0;

  #ingest(result: FollowResult): void {
    this.#builder.add(result.transactions, result.epochHeader);
    if (this.#follower.pageSize) this.#pageSize = this.#follower.pageSize;
  }

  #flushSegment(): void {
    if (this.#builder.empty || !this.#generation) return;
    // The next cut is due one sync interval after this one, not after this one's build and write.
    const cutAt = Date.now();
    const seg = this.#builder.build(this.#generation, this.#pageSize);
    this.#cache.addBytes(seg.parts, {
      hash: seg.hash,
      key: segmentKey(this.#generation, seg.meta),
      kind: "segment",
      generation: this.#generation,
      txid: seg.meta.lastTxid,
      position: seg.meta.end,
      bigEndian: this.#builder.bigEndian,
      pageSize: this.#pageSize,
      dbSize: seg.meta.dbSize,
      time: seg.meta.firstTime,
    });
    if (this.#table) {
      this.#builder.changes.applyTo(this.#table);
      this.#table.txid = seg.meta.lastTxid;
    }
    this.#builder.commit();
    this.#saveTable(false);
    this.#lastFlush = cutAt;
    this.#stats.segments++;
    this.#emit({ type: "segment", generation: this.#generation, firstTxid: seg.meta.firstTxid, lastTxid: seg.meta.lastTxid });
    for (const t of this.#targets) t.uploader.notify();
  }

  async #waitForDatabase(): Promise<void> {
    let said = false;
    for (;;) {
      const head = readHead(this.db, DB_HEADER_SIZE);
      if (head && head.length > 0) {
        let header;
        try {
          header = parseDbHeader(head);
        } catch {
          throw new WalshipError("NOT_SQLITE", `${this.db} is not a SQLite database`);
        }
        if (!header.walMode) {
          throw new WalshipError(
            "NOT_WAL",
            `${this.db} uses a rollback journal, not WAL: switch it once with sqlite3 ${this.db} "PRAGMA journal_mode=WAL"`,
          );
        }
        return;
      }
      if (this.#stopping) throw new WalshipError("NOT_FOUND", `stopped while waiting for ${this.db}`);
      if (!said) {
        this.#log.info("waiting for the database to be created", { db: this.db });
        said = true;
      }
      await new Promise((r) => setTimeout(r, Math.min(this.#pollInterval, 250)));
    }
  }

  /** Lists a replica: the highest txid it holds and the generations in it; null when unreachable. */
  async #probeReplica(storage: ReplicaStorage): Promise<RemoteState | null> {
    try {
      const generations = await listGenerations(storage);
      const newest = generations.at(-1);
      if (!newest) return { name: storage.location, generations, maxTxid: 0 };
      const { snapshots, segments } = await listGeneration(storage, newest);
      const maxTxid = Math.max(0, ...snapshots.map((s) => s.txid), ...segments.map((s) => s.lastTxid));
      return { name: storage.location, generations, maxTxid };
    } catch (err) {
      if (err instanceof WalshipError && !err.transient) throw err;
      this.#log.warn(`replica unreachable at start, buffering locally: ${errorMessage(err)}`, {
        replica: storage.location,
      });
      return null;
    }
  }

  async #resumeOrBegin(remotes: Array<RemoteState | null>): Promise<void> {
    const last = this.#cache.last;
    this.#follower = new WalFollower(this.db, last?.position ?? null);
    let why = "no earlier replication state";
    if (last) {
      const lostFiles = this.#cache.lost();
      const missing = remotes.find((r) =>
        r && !r.generations.includes(last.generation) &&
        !this.#cache.pending(r.name).some((o) => o.generation === last.generation)
      );
      const added = this.#cache.newReplicas();
      if (lostFiles.length > 0) why = `${lostFiles.length} cached object(s) are missing from ${this.#cacheDir}`;
      else if (added.length > 0) why = `replica ${added.join(", ")} was added and lacks the current generation`;
      else if (missing) {
        why = `generation ${last.generation} is not in replica ${missing.name}`;
      } else {
        this.#generation = last.generation;
        this.#pageSize = last.pageSize;
        this.#follower.rebase(last.position, last.dbSize, last.pageSize, last.bigEndian);
        this.#newBuilder(last.txid, last.position, last.dbSize, last.bigEndian);
        for (const t of this.#targets) {
          const first = this.#cache.next(t.name);
          t.uploadedTxid = first ? Math.max(0, first.txid - 1) : last.txid;
        }
        this.#lastSnapshot = Date.now();
        this.#snapshotTxid = last.txid;
        this.#table = await this.#loadTable(last.txid);
        if (this.#follower.verifyResume()) {
          this.#log.info("resuming replication", { db: this.db, generation: last.generation, txid: last.txid });
          return;
        }
        why = "the WAL no longer holds the last replicated position (it restarted while walship was not running)";
        if (await this.#heal(why)) return;
      }
    }
    const base = Math.max(last?.txid ?? 0, ...remotes.map((r) => r?.maxTxid ?? 0));
    this.#newBuilder(base, null, 0, false);
    if (last) this.#log.warn(`cannot resume: ${why}; starting a new generation from a snapshot`, { db: this.db });
    await this.#beginGeneration(why);
  }

  /** Starts a new generation: a snapshot of the current state becomes its base. */
  async #beginGeneration(reason: string): Promise<void> {
    const generation = newGenerationId();
    const baseTxid = this.#builder.txid;
    this.#follower.rebase(null, 0, 0);
    const txid = baseTxid + 1;
    this.#table = null;
    // The table is filled from the same reads that feed the compressor: the image is read once.
    const { image, table, written } = await this.#readImage(true, async (image) => {
      const table = new PageTable(image.pageSize, generation, txid);
      const written = await this.#writeSnapshot(image, {
        kind: "snapshot",
        generation,
        pageSize: image.pageSize,
        txid,
        time: Date.now(),
        position: image.position,
        bigEndian: image.bigEndian,
        dbSize: image.dbSize,
      }, table);
      return { image, table, written };
    }, ({ written }) => fs.rmSync(written.path, { force: true }));
    this.#generation = generation;
    this.#pageSize = image.pageSize;
    this.#follower.rebase(image.position, image.dbSize, image.pageSize, image.bigEndian);
    this.#storeSnapshot(written, reason);
    this.#table = table;
    this.#newBuilder(txid, image.position, image.dbSize, image.bigEndian);
    this.#saveTable(true);
    this.#repairReason = null;
  }

  /** A snapshot within the current generation, at the latest txid. */
  async #periodicSnapshot(): Promise<void> {
    this.#flushSegment();
    const written = await this.#readImage(false, (image) => {
      // What the polls read before the image is shipped first: the snapshot stands for its last txid.
      this.#flushSegment();
      return this.#writeSnapshot(image, {
        kind: "snapshot",
        generation: this.#generation!,
        pageSize: image.pageSize,
        txid: this.#builder.txid,
        time: Date.now(),
        position: this.#builder.end,
        bigEndian: this.#builder.bigEndian,
        dbSize: image.dbSize,
      });
    }, (unproven) => fs.rmSync(unproven.path, { force: true }));
    this.#storeSnapshot(written, "snapshot interval elapsed");
  }

  /**
   * Hands `use` a consistent image of the database (readConsistentImage:
   * read in place, or copied first). With `baseline`, the follower accepts
   * any WAL epoch (a new base); otherwise what it polls meanwhile is ingested.
   */
  #readImage<T>(baseline: boolean, use: (image: ImageView) => Promise<T>, discard?: (value: T) => void): Promise<T> {
    return readConsistentImage(this.db, this.#follower, {
      discard: (value, why) => {
        this.#log.debug(`snapshot: the database read in place is not proven (${why}); reading it again`, { db: this.db });
        discard?.(value);
      },
      baseline,
      onPoll: (r) => {
        if (!baseline && !r.lost) this.#ingest(r);
      },
      locks: this.#locks,
      // Unpinned beside a WAL, checkpoints may pass the frames read before the
      // database: a read in place would often fail its proof (a copy is
      // proven against frames read after it). Without a WAL nothing checkpoints.
      copyBecause: this.#pinKeeper.holding || !fs.existsSync(`${this.db}-wal`)
        ? undefined
        : "walship does not hold its read slot now",
      copyPath: this.#tempPath(),
      onCopy: (why) => this.#log.debug(`snapshot: copying the database first: ${why}`, { db: this.db }),
    }, use);
  }

  /**
   * Writes the snapshot object of `image` to a temporary file; `table`, when
   * given, is filled with the image's page hashes. The file is removed on
   * failure; {@linkcode #storeSnapshot} takes it once the image is proven.
   */
  async #writeSnapshot(image: ImageView, meta: SnapshotMeta, table?: PageTable): Promise<WrittenSnapshot> {
    const objectTmp = this.#tempPath();
    try {
      const progress = this.#snapshotProgress?.() ?? null;
      const hash = await writeSnapshotObject(image.chunks(), meta, objectTmp, { onProgress: progress?.update, table })
        .finally(() => progress?.finish());
      return { path: objectTmp, hash, meta };
    } catch (err) {
      fs.rmSync(objectTmp, { force: true });
      throw err;
    }
  }

  /** Moves a written snapshot object into the cache, for upload. */
  #storeSnapshot(written: WrittenSnapshot, reason: string): void {
    const { path: objectTmp, hash, meta } = written;
    try {
      this.#cache.addFile(objectTmp, {
        hash,
        key: snapshotKey(meta.generation, meta.txid, meta.time),
        kind: "snapshot",
        generation: meta.generation,
        txid: meta.txid,
        position: meta.position,
        bigEndian: meta.bigEndian,
        pageSize: meta.pageSize,
        dbSize: meta.dbSize,
        time: meta.time,
      });
    } finally {
      fs.rmSync(objectTmp, { force: true });
    }
    this.#lastSnapshot = Date.now();
    this.#snapshotTxid = meta.txid;
    this.#stats.snapshots++;
    this.#log.info("snapshot taken", { db: this.db, generation: meta.generation, txid: meta.txid, pages: meta.dbSize, reason });
    this.#emit({ type: "snapshot", generation: meta.generation, txid: meta.txid, reason });
    for (const t of this.#targets) t.uploader.notify();
  }

  #tempPath(): string {
    return tempPathBeside(path.join(this.#cacheDir, "snapshot"));
  }

  /** Starts a retention pass on a replica, unless one runs or none is set. */
  #prune(target: Target): void {
    const generation = this.#generation;
    if (target.retention === undefined || target.pruning || !generation) return;
    target.pruning = enforceRetention(target.storage, generation, target.retention)
      .then((r) => {
        if (r.objects > 0) {
          this.#log.info("retention: deleted old objects", { replica: target.name, ...r });
          this.#emit({ type: "retention", replica: target.name, generations: r.generations, objects: r.objects });
        }
      })
      .catch((err) => this.#log.warn(`retention pass failed, will try after the next snapshot: ${errorMessage(err)}`, { replica: target.name }))
      .finally(() => (target.pruning = null));
  }

  #emit(e: ReplicatorEvent): void {
    for (const l of this.#listeners) l(e);
  }
}
