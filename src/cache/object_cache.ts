/**
 * The local cache between the WAL and the replica (DESIGN.md invariant 5).
 * An object is first made durable here (written, fsynced, named by its
 * content hash), and only then recorded in the journal; the uploader works
 * from the journal in order and may repeat an upload after a crash, which is
 * harmless because an object's key and bytes never change.
 *
 * Layout of the cache directory:
 *
 *   objects/<sha256>   objects waiting for upload
 *   journal            JSON lines: "object" records (fsynced) and "uploaded" marks
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import { ioError } from "../capture/file_source.ts";
import { fsyncDir, renameDurable, writeFileDurable } from "../durable.ts";
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
}

type JournalRecord = ({ t: "object" } & CachedObject) | { t: "uploaded"; seq: number };

const COMPACT_AFTER = 2000;

/** The cache directory of one replicated database. */
export class ObjectCache {
  readonly dir: string;
  #journalFd: number;
  #pending = new Map<number, CachedObject>();
  #last: CachedObject | null = null;
  #records = 0;

  private constructor(dir: string, fd: number) {
    this.dir = dir;
    this.#journalFd = fd;
  }

  /** Opens (creating if needed) the cache at `dir` and replays its journal. */
  static open(dir: string): ObjectCache {
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
    const cache = new ObjectCache(dir, fs.openSync(journal, "a"));
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
    // Objects whose file is gone cannot be uploaded; the journal still names them,
    // and so does lost(), which the replicator treats as unproven continuity.
    cache.#removeStrayFiles();
    return cache;
  }

  /** The last object recorded: where replication stands. */
  get last(): CachedObject | null {
    return this.#last;
  }

  /** Objects recorded but not yet uploaded, in journal order. */
  pending(): CachedObject[] {
    return [...this.#pending.values()];
  }

  /** Total bytes of objects waiting for upload. */
  pendingBytes(): number {
    let n = 0;
    for (const o of this.#pending.values()) n += o.size;
    return n;
  }

  /** Path of an object's file. */
  objectPath(hash: string): string {
    return path.join(this.dir, "objects", hash);
  }

  /** Pending objects whose file is missing (the cache directory was tampered with). */
  lost(): CachedObject[] {
    return this.pending().filter((o) => !fs.existsSync(this.objectPath(o.hash)));
  }

  /** Makes `bytes` durable under its hash, then records it. */
  addBytes(bytes: Uint8Array, entry: Omit<CachedObject, "seq" | "size">): CachedObject {
    writeFileDurable(this.objectPath(entry.hash), bytes);
    return this.#record({ ...entry, size: bytes.length });
  }

  /** Moves an already-fsynced file in as the object `entry.hash`, then records it. */
  addFile(file: string, entry: Omit<CachedObject, "seq" | "size">): CachedObject {
    const size = fs.statSync(file).size;
    renameDurable(file, this.objectPath(entry.hash));
    return this.#record({ ...entry, size });
  }

  /** Notes that an object reached the replica and frees its file. */
  markUploaded(seq: number): void {
    const obj = this.#pending.get(seq);
    if (!obj) return;
    // No fsync: losing this mark in a crash only repeats an idempotent upload.
    this.#append({ t: "uploaded", seq }, false);
    this.#pending.delete(seq);
    if (![...this.#pending.values()].some((o) => o.hash === obj.hash)) {
      fs.rmSync(this.objectPath(obj.hash), { force: true });
    }
    if (this.#records > COMPACT_AFTER) this.#compact();
  }

  /** Forgets every record: the next object starts a new history. */
  reset(): void {
    for (const o of this.#pending.values()) fs.rmSync(this.objectPath(o.hash), { force: true });
    this.#pending.clear();
    this.#last = null;
    this.#compact();
  }

  close(): void {
    fs.closeSync(this.#journalFd);
  }

  #record(entry: Omit<CachedObject, "seq">): CachedObject {
    const obj: CachedObject = { seq: (this.#last?.seq ?? 0) + 1, ...entry };
    this.#append({ t: "object", ...obj }, true);
    this.#apply({ t: "object", ...obj });
    return obj;
  }

  #apply(rec: JournalRecord): void {
    this.#records++;
    if (rec.t === "object") {
      const { t: _t, ...obj } = rec;
      this.#pending.set(obj.seq, obj);
      this.#last = obj;
    } else {
      this.#pending.delete(rec.seq);
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
    const keep = new Map(this.#pending);
    if (this.#last) keep.set(this.#last.seq, this.#last);
    const lines = [...keep.values()].sort((a, b) => a.seq - b.seq).map((o) => {
      const rec: JournalRecord[] = [{ t: "object", ...o }];
      if (!this.#pending.has(o.seq)) rec.push({ t: "uploaded", seq: o.seq });
      return rec.map((r) => JSON.stringify(r) + "\n").join("");
    });
    const journal = path.join(this.dir, "journal");
    writeFileDurable(journal, new TextEncoder().encode(lines.join("")));
    fs.closeSync(this.#journalFd);
    this.#journalFd = fs.openSync(journal, "a");
    this.#records = keep.size;
    fsyncDir(this.dir);
  }

  #removeStrayFiles(): void {
    const wanted = new Set([...this.#pending.values()].map((o) => o.hash));
    const objects = path.join(this.dir, "objects");
    for (const name of fs.readdirSync(objects)) {
      if (!wanted.has(name)) fs.rmSync(path.join(objects, name), { force: true });
    }
  }
}
