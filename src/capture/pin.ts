/**
 * The pin: keeps SQLite from throwing away WAL frames walship has not read
 * yet, by taking part in SQLite's own lock protocol (wal.c, os_unix.c) with
 * byte-range locks of its own, as a SQLite reader does (DESIGN.md, "The
 * pin"; docs/DECISIONS.md, "The pin holds a real read mark"):
 *
 * - READ_LOCK(i), i in 1..4 (bytes 124..127 of -shm), shared, with a real
 *   read mark: the mark is set as a reader sets it (READ_LOCK(i) taken
 *   exclusively, aReadMark[i] = mxFrame written, the lock turned shared
 *   without letting go). A writer cannot restart the WAL while any reader
 *   holds a slot, and a checkpoint backfills no further than the mark, so
 *   after one backfill up to it an app's automatic checkpoints find nothing
 *   to do and return without syncing.
 * - READ_LOCK(0), shared, only while the slot is let go and the WAL is fully
 *   backfilled ({@linkcode WalPin.keepBackfillOut}): backfill needs it
 *   exclusively, so the WAL can then restart once, but the new WAL cannot
 *   be backfilled, so it cannot restart again before walship holds a slot.
 * - DMS (byte 128 of -shm), shared, as every connection holds it: the -shm
 *   is then never rebuilt under us, so the commit ledger stays valid.
 * - the database's SHARED range (0x40000002, 510 bytes), shared: the last
 *   connection to close cannot take EXCLUSIVE, so it does not checkpoint and
 *   delete the WAL.
 *
 * Where the -shm cannot be opened for writing, the slot is held with
 * whatever mark it has (an unused one preferred), as before marks were set.
 * Locks are open-file-description locks (F_OFD_SETLK), so closing any other
 * descriptor of these files in this process never drops them.
 *
 * @module
 */

import fs from "node:fs";
import { WalshipError } from "../errors.ts";
import { F_RDLCK, F_UNLCK, F_WRLCK, type FileLocks } from "../runtime.ts";
import { isHostLittleEndian } from "../sqlite/checksum.ts";
import { READ_MARK_UNUSED, SHM_LOCK, type WalIndexHeader } from "../sqlite/wal_index.ts";

const ENOENT = 2;

/** Byte offset of aReadMark[0] in the -shm (wal.c: WalCkptInfo after two 48-byte headers, after nBackfill). */
const READ_MARK_OFFSET = 100;

/** The database file's SHARED byte range (os_unix.c: SHARED_FIRST, SHARED_SIZE). */
export const DB_SHARED_FIRST = 0x40000002;
export const DB_SHARED_SIZE = 510;

/** What the pin holds right now. */
export interface PinState {
  /** The READ_LOCK slot held (1..4), or null while let go. */
  slot: number | null;
}

/** Shared locks on one database's -shm and file. */
export class WalPin {
  #locks: FileLocks;
  #dbFd: number;
  #shmFd: number;
  /** A node:fs descriptor of the -shm to write read marks through, or null (read-only -shm). */
  #markFd: number | null;
  #slot: number | null = null;
  #backfillOut = false;

  private constructor(locks: FileLocks, dbFd: number, shmFd: number, markFd: number | null) {
    this.#locks = locks;
    this.#dbFd = dbFd;
    this.#shmFd = shmFd;
    this.#markFd = markFd;
  }

  /**
   * Opens the database and its -shm and takes the DMS and SHARED locks.
   * Returns null when there is no -shm yet (no connection has opened the
   * database in WAL mode: try again later). Throws a NOT_WAL error for a
   * database held in `locking_mode=EXCLUSIVE`.
   */
  static open(locks: FileLocks, dbPath: string): WalPin | null {
    const db = locks.open(dbPath);
    if (db.fd < 0) throw new WalshipError("IO", `cannot open ${dbPath} to pin it (errno ${db.errno})`);
    // The database lock first: a connection in locking_mode=EXCLUSIVE keeps its
    // wal-index in memory, so it has no -shm, only this lock to show for it.
    if (!locks.setLock(db.fd, F_RDLCK, DB_SHARED_FIRST, DB_SHARED_SIZE)) {
      locks.close(db.fd);
      throw exclusiveError(dbPath);
    }
    const shmPath = `${dbPath}-shm`;
    let shm = locks.open(shmPath, true);
    let markFd: number | null = null;
    if (shm.fd < 0 && shm.errno === ENOENT) {
      // No -shm yet. Not read-only: one created in between would be opened
      // read-only and pinned without read marks for good.
      locks.close(db.fd);
      return null;
    }
    if (shm.fd >= 0) {
      try {
        markFd = fs.openSync(shmPath, "r+");
      } catch {
        markFd = null;
      }
    } else {
      shm = locks.open(shmPath);
    }
    if (shm.fd < 0) {
      locks.close(db.fd);
      return null;
    }
    const pin = new WalPin(locks, db.fd, shm.fd, markFd);
    try {
      if (!locks.setLock(shm.fd, F_RDLCK, SHM_LOCK.DMS, 1)) {
        // Only a connection that is (re)building the -shm holds DMS exclusively: wait for it.
        pin.close();
        return null;
      }
    } catch (err) {
      pin.close();
      throw err;
    }
    return pin;
  }

  /** The READ_LOCK slot held, or null. */
  get slot(): number | null {
    return this.#slot;
  }

  /** True when the pin sets real read marks (the -shm is writable). */
  get marks(): boolean {
    return this.#markFd !== null;
  }

  /**
   * Takes a READ_LOCK(i), i in 1..4, shared. With a writable -shm its read
   * mark is the header's mxFrame, as a reader starting now would have it: a
   * slot that has that mark already is shared, otherwise a free slot gets
   * it. `read` reads the wal-index header (null when it cannot be read: then
   * any slot is taken as it is). Returns false when every slot is held
   * exclusively right now (a checkpointer, a writer restarting the WAL, or a
   * reader setting its mark): try again later.
   */
  hold(read: () => WalIndexHeader | null): boolean {
    if (this.#slot !== null) return true;
    const h = read();
    if (h === null || this.#markFd === null) return this.#holdAsIs(h?.readMarks ?? null);
    // A slot that already has the mark: shared with the readers that set it.
    for (let i = 1; i <= 4; i++) {
      if (h.readMarks[i] !== h.mxFrame || h.nBackfill > h.mxFrame) continue;
      if (!this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0 + i, 1)) continue;
      // Held shared, the mark can no longer change: it must still be the one chosen.
      if (read()?.readMarks[i] === h.mxFrame) {
        this.#slot = i;
        return true;
      }
      this.#locks.setLock(this.#shmFd, F_UNLCK, SHM_LOCK.READ0 + i, 1);
    }
    for (let i = 1; i <= 4; i++) {
      if (this.#takeMarked(i, h.mxFrame)) return true;
    }
    return false;
  }

  /**
   * Takes slot `i` as a reader sets its mark: exclusively, writes `mark`,
   * then shared in one step (the slot is never free in between). False when
   * someone else holds the slot.
   */
  #takeMarked(i: number, mark: number): boolean {
    if (!this.#locks.setLock(this.#shmFd, F_WRLCK, SHM_LOCK.READ0 + i, 1)) return false;
    this.#writeMark(i, mark);
    this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0 + i, 1);
    this.#slot = i;
    return true;
  }

  /**
   * Moves to another slot whose mark is the header's mxFrame now, taken
   * (and marked) before the old one is let go, so the WAL cannot restart in
   * between. A checkpointer waiting on the old slot then backfills every
   * frame, up to the new mark, and waits on the new slot to restart the WAL.
   * False when there are no marks or no free slot.
   */
  moveToFreshMark(read: () => WalIndexHeader | null): boolean {
    const old = this.#slot;
    const h = read();
    if (old === null || this.#markFd === null || h === null) return false;
    for (let i = 1; i <= 4; i++) {
      if (i === old || !this.#takeMarked(i, h.mxFrame)) continue;
      this.#locks.setLock(this.#shmFd, F_UNLCK, SHM_LOCK.READ0 + old, 1);
      return true;
    }
    return false;
  }

  /** Without marks: any slot shared, an unused one first (it holds back no backfill). */
  #holdAsIs(readMarks: number[] | null): boolean {
    const marks = readMarks ?? [0, READ_MARK_UNUSED, READ_MARK_UNUSED, READ_MARK_UNUSED, READ_MARK_UNUSED];
    const order = [1, 2, 3, 4].sort((a, b) => rank(marks[b]) - rank(marks[a]));
    for (const i of order) {
      if (this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0 + i, 1)) {
        this.#slot = i;
        return true;
      }
    }
    return false;
  }

  #writeMark(i: number, mark: number): void {
    const buf = new Uint8Array(4);
    new DataView(buf.buffer).setUint32(0, mark, isHostLittleEndian);
    fs.writeSync(this.#markFd!, buf, 0, 4, READ_MARK_OFFSET + 4 * i);
  }

  /**
   * Takes READ_LOCK(0) shared: no backfill until {@linkcode letBackfillIn}.
   * False when someone holds it exclusively (a checkpointer backfilling).
   */
  keepBackfillOut(): boolean {
    if (!this.#backfillOut) this.#backfillOut = this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0, 1);
    return this.#backfillOut;
  }

  /** True while READ_LOCK(0) is held. */
  get backfillOut(): boolean {
    return this.#backfillOut;
  }

  /** Lets backfill in again (drops READ_LOCK(0)). */
  letBackfillIn(): void {
    if (!this.#backfillOut) return;
    this.#locks.setLock(this.#shmFd, F_UNLCK, SHM_LOCK.READ0, 1);
    this.#backfillOut = false;
  }

  /** Lets the READ_LOCK slot go: the WAL may restart until {@linkcode hold}. */
  letGo(): void {
    if (this.#slot === null) return;
    this.#locks.setLock(this.#shmFd, F_UNLCK, SHM_LOCK.READ0 + this.#slot, 1);
    this.#slot = null;
  }

  /**
   * True when another connection runs a RESTART or TRUNCATE checkpoint: it
   * holds both the WRITE and the CKPT lock (so nothing new can be committed)
   * and waits for the read slots.
   */
  checkpointerWaiting(): boolean {
    return this.#locks.testLock(this.#shmFd, F_WRLCK, SHM_LOCK.WRITE, 1) !== F_UNLCK &&
      this.#locks.testLock(this.#shmFd, F_WRLCK, SHM_LOCK.CKPT, 1) !== F_UNLCK;
  }

  /** Drops every lock and closes the files. */
  close(): void {
    if (this.#dbFd >= 0) this.#locks.close(this.#dbFd); // closing the description drops its locks
    if (this.#shmFd >= 0) this.#locks.close(this.#shmFd);
    if (this.#markFd !== null) fs.closeSync(this.#markFd);
    this.#dbFd = this.#shmFd = -1;
    this.#markFd = null;
    this.#slot = null;
    this.#backfillOut = false;
  }
}

/** Unused slots first, then the highest mark (it holds back the least backfill). */
function rank(mark: number | undefined): number {
  return mark === undefined ? -1 : mark === READ_MARK_UNUSED ? 0x100000000 : mark;
}

function exclusiveError(dbPath: string): WalshipError {
  return new WalshipError(
    "NOT_WAL",
    `${dbPath} is held exclusively by another connection (PRAGMA locking_mode=EXCLUSIVE?): ` +
      `no outside reader can replicate it; use the default locking_mode=NORMAL`,
  );
}
