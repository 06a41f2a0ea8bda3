/**
 * The local cache between the WAL and the replica (DESIGN.md invariant 5).
 * An object is first made durable here (written, fsynced, named by its
 * content hash), and only then recorded in the journal; the uploader works
 * from the journal in order and may repeat an upload after a crash, which is
 * harmless because an object's key and bytes never change.
 *
 * Layout of the cache directory:
 *
 *   objects/<sha256>   objects waiting for upload to at least one replica
 *   journal            JSON lines: "object" records (fsynced, naming the replicas
 *                      they go to) and per-replica "uploaded" marks
 *
 * (The directory also holds the page table, `pages`, and the segment
 * builder's scratch file, `segment-spill`; this class touches neither.)
 *
 * Each replica keeps its own position: an object leaves a replica's queue
 * when that replica has it, and its file is freed when every replica has it.
 *
 * @module
 */

import { byteLength } from "../bytes.ts";
import fs from "node:fs";
import path from "node:path";
import { ioError } from "../capture/file_source.ts";
import { type FileRun, fsyncDir, renameDurable, writeFileDurable } from "../durable.ts";
import type { WalPosition } from "../sqlite/wal_scanner.ts";

/** One object recorded in the journal. */
export interface CachedObject {
  /** Journal order, from 1. */
  seq: number;
  /** SHA-256 (hex) of the object bytes: its file name under objects/. */
  hash: string;
  /** Key in the replica. */
  key: string;
  kind: "segment" | "snapshot";
  generation: string;
  /** Last txid the object covers (the snapshot's txid). */
  txid: number;
  /** Replication position after this object. */
  position: WalPosition | null;
  /** Checksum byte order of the WAL epoch at `position`. */
  bigEndian: boolean;
  pageSize: number;
  dbSize: number;
  /** Object size in bytes. */
  size: number;
  /** Unix ms when the first transaction in the object was observed (for lag). */
  time?: number;
}

/**
 * `to`: the replicas the object goes to; `r`: which replica has it (absent:
 * all); "replicas": the replicas that got objects before a compaction.
 */
type JournalRecord =
  | ({ t: "object"; to?: string[] } & CachedObject)
  | { t: "uploaded"; seq: number; r?: string }
  | { t: "replicas"; names: string[] };

const COMPACT_AFTER = 2000;

/** The cache directory of one replicated database. */
export class ObjectCache {
  readonly dir: string;
  /** The replicas objects go to, by name. */
  readonly replicas: readonly string[];
  #journalFd: number;
  #objects = new Map<number, CachedObject>();
  /** Per replica, the seqs it does not have yet. */
  #queues = new Map<string, Set<number>>();
  #last: CachedObject | null = null;
  #records = 0;
  /** Replicas any object was ever recorded for. */
  #known = new Set<string>();

  private constructor(dir: string, fd: number, replicas: string[]) {
    this.dir = dir;
    this.#journalFd = fd;
    this.replicas = replicas;
    for (const r of replicas) this.#queues.set(r, new Set());
  }

  /**
   * Opens (creating if needed) the cache at `dir` for these replicas (by
   * name) and replays its journal. Marks for replicas no longer named are
   * dropped; a replica named for the first time gets only new objects.
   */
  static open(dir: string, replicas: string[] = ["default"]): ObjectCache {
    const objects = path.join(dir, "objects");
    try {
      fs.mkdirSync(objects, { recursive: true });
    } catch (err) {
      throw ioError(`cannot create cache directory ${dir}`, err);
    }
    const journal = path.join(dir, "journal");
    let text = "";
    try {
      text = fs.readFileSync(journal, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw ioError(`cannot read ${journal}`, err);
    }
    const cache = new ObjectCache(dir, fs.openSync(journal, "a"), [...new Set(replicas)]);
    for (const line of text.split("\n")) {
      if (!line) continue;
      let rec: JournalRecord;
      try {
        rec = JSON.parse(line);
      } catch {
        break; // a torn last line from a crash: everything before it stands
      }
      cache.#apply(rec);
    }
    cache.#dropUnqueued();
    // Objects whose file is gone cannot be uploaded; the journal still names them,
    // and so does lost(), which the replicator treats as unproven continuity.
    cache.#removeStrayFiles();
    return cache;
  }

  /** The last object recorded: where replication stands. */
  get last(): CachedObject | null {
    return this.#last;
  }

  /**
   * Objects recorded but not yet uploaded, in journal order: those `replica`
   * lacks, or without it, those some replica lacks.
   */
  pending(replica?: string): CachedObject[] {
    if (replica === undefined) return [...this.#objects.values()];
    const queue = this.#queues.get(replica);
    if (!queue) return [];
    return [...queue].map((seq) => this.#objects.get(seq)!);
  }

  /** Total bytes of the objects {@linkcode pending} returns. */
  pendingBytes(replica?: string): number {
    let n = 0;
    for (const o of this.pending(replica)) n += o.size;
    return n;
  }

  /**
   * Replicas named now that no recorded object ever went to, while earlier
   * objects exist: they lack the history, so replication cannot just resume.
   */
  newReplicas(): string[] {
    if (!this.#last) return [];
    return this.replicas.filter((r) => !this.#known.has(r));
  }

  /** The first object `replica` lacks, if any. */
  next(replica: string): CachedObject | undefined {
    const queue = this.#queues.get(replica);
    if (!queue) return undefined;
    for (const seq of queue) return this.#objects.get(seq);
    return undefined;
  }

  /** Path of an object's file. */
  objectPath(hash: string): string {
    return path.join(this.dir, "objects", hash);
  }

  /** Pending objects whose file is missing (the cache directory was tampered with). */
  lost(): CachedObject[] {
    return this.pending().filter((o) => !fs.existsSync(this.objectPath(o.hash)));
  }

  /** Makes `bytes` (or parts of them, some perhaps runs of another file) durable under its hash, then records it. */
  addBytes(bytes: Uint8Array | Array<Uint8Array | FileRun>, entry: Omit<CachedObject, "seq" | "size">): CachedObject {
    writeFileDurable(this.objectPath(entry.hash), bytes);
    return this.#record({ ...entry, size: byteLength(bytes) });
  }

  /** Moves an already-fsynced file in as the object `entry.hash`, then records it. */
  addFile(file: string, entry: Omit<CachedObject, "seq" | "size">): CachedObject {
    const size = fs.statSync(file).size;
    renameDurable(file, this.objectPath(entry.hash));
    return this.#record({ ...entry, size });
  }

  /** Notes that an object reached `replica`, and frees its file once every replica has it. */
  markUploaded(seq: number, replica: string = this.replicas[0]): void {
    const queue = this.#queues.get(replica);
    if (!queue?.has(seq)) return;
    // No fsync: losing this mark in a crash only repeats an idempotent upload.
    this.#append({ t: "uploaded", seq, r: replica }, false);
    queue.delete(seq);
    this.#release(seq);
    if (this.#records > COMPACT_AFTER) this.#compact();
  }

  /** Forgets every record: the next object starts a new history. */
  reset(): void {
    for (const o of this.#objects.values()) fs.rmSync(this.objectPath(o.hash), { force: true });
    this.#objects.clear();
    for (const q of this.#queues.values()) q.clear();
    this.#last = null;
    this.#compact();
  }

  close(): void {
    fs.closeSync(this.#journalFd);
  }

  #record(entry: Omit<CachedObject, "seq">): CachedObject {
    const obj: CachedObject = { seq: (this.#last?.seq ?? 0) + 1, ...entry };
    const rec: JournalRecord = { t: "object", ...obj, to: [...this.replicas] };
    for (const r of this.replicas) this.#known.add(r);
    this.#append(rec, true);
    this.#apply(rec);
    return obj;
  }

  #apply(rec: JournalRecord): void {
    this.#records++;
    if (rec.t === "object") {
      const { t: _t, to, ...obj } = rec;
      this.#objects.set(obj.seq, obj);
      this.#last = obj;
      for (const r of to ?? this.replicas) {
        this.#queues.get(r)?.add(obj.seq);
        this.#known.add(r);
      }
    } else if (rec.t === "replicas") {
      for (const r of rec.names) this.#known.add(r);
    } else {
      const queues = rec.r === undefined ? [...this.#queues.values()] : [this.#queues.get(rec.r)];
      for (const q of queues) q?.delete(rec.seq);
    }
  }

  /** Objects no replica waits for any more (after a replay) are not pending. */
  #dropUnqueued(): void {
    for (const seq of [...this.#objects.keys()]) this.#release(seq, false);
  }

  /** Forgets an object, and removes its file, once no replica waits for it. */
  #release(seq: number, removeFile = true): void {
    for (const q of this.#queues.values()) if (q.has(seq)) return;
    const obj = this.#objects.get(seq);
    if (!obj) return;
    this.#objects.delete(seq);
    if (removeFile && ![...this.#objects.values()].some((o) => o.hash === obj.hash)) {
      fs.rmSync(this.objectPath(obj.hash), { force: true });
    }
  }

  #append(rec: JournalRecord, sync: boolean): void {
    try {
      fs.writeSync(this.#journalFd, JSON.stringify(rec) + "\n");
      if (sync) fs.fsyncSync(this.#journalFd);
    } catch (err) {
      throw ioError(`cannot write journal in ${this.dir}`, err);
    }
  }

  /** Rewrites the journal with only what still matters: the last object and the pending ones. */
  #compact(): void {
    const keep = new Map(this.#objects);
    if (this.#last) keep.set(this.#last.seq, this.#last);
    const lines = [...keep.values()].sort((a, b) => a.seq - b.seq).map((o) => {
      const to = this.replicas.filter((r) => this.#queues.get(r)!.has(o.seq));
      // The last object, already everywhere, is kept as the position and goes nowhere.
      return JSON.stringify({ t: "object", ...o, to } satisfies JournalRecord) + "\n";
    });
    lines.unshift(JSON.stringify({ t: "replicas", names: [...this.#known] } satisfies JournalRecord) + "\n");
    const journal = path.join(this.dir, "journal");
    writeFileDurable(journal, new TextEncoder().encode(lines.join("")));
    fs.closeSync(this.#journalFd);
    this.#journalFd = fs.openSync(journal, "a");
    this.#records = keep.size + 1;
    fsyncDir(this.dir);
  }

  #removeStrayFiles(): void {
    const wanted = new Set([...this.#objects.values()].map((o) => o.hash));
    const objects = path.join(this.dir, "objects");
    for (const name of fs.readdirSync(objects)) {
      if (!wanted.has(name)) fs.rmSync(path.join(objects, name), { force: true });
    }
  }
}
