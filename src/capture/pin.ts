/**
 * The pin: keeps SQLite from throwing away WAL frames walship has not read
 * yet, by taking part in SQLite's own lock protocol (wal.c, os_unix.c) with
 * shared byte-range locks of its own (DESIGN.md, "The pin"):
 *
 * - READ_LOCK(i), i in 1..4 (bytes 124..127 of -shm), shared: a writer
 *   cannot restart the WAL while any reader holds one, and a checkpoint that
 *   wants to restart or truncate it waits. A slot whose read mark is
 *   0xffffffff does not hold back backfill, so that one is preferred.
 *   READ_LOCK(0) is never held with it: it blocks all backfill. It is taken
 *   (shared) only for the moment the slot is let go, when the WAL is fully
 *   backfilled, so that the WAL can restart once but not twice unread
 *   ({@linkcode WalPin.keepBackfillOut}).
 * - DMS (byte 128 of -shm), shared, as every connection holds it: the -shm
 *   is then never rebuilt under us, so the commit ledger stays valid.
 * - the database's SHARED range (0x40000002, 510 bytes), shared: the last
 *   connection to close cannot take EXCLUSIVE, so it does not checkpoint and
 *   delete the WAL.
 *
 * Locks are open-file-description locks (F_OFD_SETLK), so closing any other
 * descriptor of these files in this process never drops them.
 *
 * @module
 */

import { WalshipError } from "../errors.ts";
import { F_RDLCK, F_UNLCK, F_WRLCK, type FileLocks } from "../runtime.ts";
import { READ_MARK_UNUSED, SHM_LOCK } from "../sqlite/wal_index.ts";

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
  #slot: number | null = null;
  #backfillOut = false;

  private constructor(locks: FileLocks, dbFd: number, shmFd: number) {
    this.#locks = locks;
    this.#dbFd = dbFd;
    this.#shmFd = shmFd;
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
    const shm = locks.open(`${dbPath}-shm`);
    if (shm.fd < 0) {
      locks.close(db.fd);
      return null;
    }
    const pin = new WalPin(locks, db.fd, shm.fd);
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

  /**
   * Takes a shared READ_LOCK(i), i in 1..4, preferring a slot whose read
   * mark is unused. Returns false when every slot is held exclusively right
   * now (a checkpointer or a reader setting its mark): try again later.
   */
  hold(readMarks: number[]): boolean {
    if (this.#slot !== null) return true;
    const order = [1, 2, 3, 4].sort((a, b) => rank(readMarks[b]) - rank(readMarks[a]));
    for (const i of order) {
      if (this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0 + i, 1)) {
        this.#slot = i;
        return true;
      }
    }
    return false;
  }

  /**
   * Moves to a slot with a better mark, when there is one: the slot held caps
   * backfill at its mark (no one can change it while held), so a slot taken
   * with a real mark, or whose mark was stale when it was chosen (SQLite sets
   * slot 1 to 0 when it restarts the WAL), would hold backfill back for good.
   * The new slot is taken before the old one is let go, so the WAL can never
   * restart in between. Returns the slot given up, or null.
   */
  moveToBetterSlot(readMarks: number[]): number | null {
    const old = this.#slot;
    if (old === null || readMarks[old] === READ_MARK_UNUSED) return null;
    const better = [1, 2, 3, 4].filter((i) => i !== old && rank(readMarks[i]) > rank(readMarks[old]))
      .sort((a, b) => rank(readMarks[b]) - rank(readMarks[a]));
    for (const i of better) {
      if (this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0 + i, 1)) {
        this.#locks.setLock(this.#shmFd, F_UNLCK, SHM_LOCK.READ0 + old, 1);
        this.#slot = i;
        return old;
      }
    }
    return null;
  }

  /**
   * Takes READ_LOCK(0) shared, for the moment the slot is let go: backfill
   * needs it exclusively, and a writer restarts the WAL only once it is fully
   * backfilled, so the WAL can then restart once (when it is fully backfilled
   * already) but not again, however late walship holds its slot back. Never
   * kept: it would hold back every checkpoint. False when someone holds it
   * exclusively (a checkpointer backfilling).
   */
  keepBackfillOut(): boolean {
    if (this.#backfillOut) return true;
    this.#backfillOut = this.#locks.setLock(this.#shmFd, F_RDLCK, SHM_LOCK.READ0, 1);
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
    this.#dbFd = this.#shmFd = -1;
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
