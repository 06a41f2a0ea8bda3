/**
 * When to hold the pin and when to let it go (DESIGN.md, "The pin").
 *
 * Held, the WAL cannot restart, so no frame can vanish before walship has
 * read it. But a WAL that never restarts grows, and an app's own RESTART or
 * TRUNCATE checkpoint waits for the read slot. So the slot is let go only
 * when walship has read every committed frame and the WAL is fully
 * backfilled, and then only while it matters:
 *
 * - a RESTART/TRUNCATE checkpointer is waiting (it holds the WRITE lock, so
 *   nothing new can be committed meanwhile): taken back once it is done;
 * - the WAL has grown past RESTART_AFTER_FRAMES: let go for a moment so the
 *   next writer can restart it; taken back right after.
 *
 * Meanwhile READ_LOCK(0) is held shared, which keeps backfill out: the WAL,
 * fully backfilled when the slot is let go, can restart once, but the new
 * one cannot be backfilled, so it cannot restart again before walship has
 * its slot back. Timing alone cannot promise that: a fast writer fills,
 * backfills and restarts a WAL in a millisecond or two, and on a busy
 * machine walship may not get to run that soon. The commit ledger still
 * checks every epoch change.
 *
 * @module
 */

import { readWalIndexFile } from "../capture/file_source.ts";
import { WalPin } from "../capture/pin.ts";
import type { WalFollower } from "../capture/wal_follower.ts";
import { errorMessage, WalshipError } from "../errors.ts";
import type { Log } from "../log.ts";
import { type FileLocks, loadFileLocks } from "../runtime.ts";
import { READ_MARK_UNUSED } from "../sqlite/wal_index.ts";

/** Let the slot go for a restart once the WAL holds this many frames. */
export const RESTART_AFTER_FRAMES = 1000;
/** How long the slot stays let go for a restart, ms. */
const RESTART_WINDOW_MS = 5;
/** Longest wait for a checkpointer before taking the slot back anyway, ms. */
const CHECKPOINT_WAIT_MS = 5000;
/** Longest walship keeps trying to take a slot back after letting it go, ms. */
const HOLD_RETRY_MS = CHECKPOINT_WAIT_MS + 1000;

/** Read marks to pick a slot by when the -shm header cannot be read: every slot unused. */
const NO_READ_MARKS = [0, READ_MARK_UNUSED, READ_MARK_UNUSED, READ_MARK_UNUSED, READ_MARK_UNUSED];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Holds, lets go of and takes back the pin of one database. */
export class PinKeeper {
  readonly #db: string;
  readonly #log: Log;
  #locks: FileLocks | null;
  #why: string;
  #pin: WalPin | null = null;
  #saidExclusive = false;
  /** Times the slot was let go for a waiting checkpointer, and for a restart. */
  readonly counts = { forCheckpoint: 0, forRestart: 0 };

  private constructor(db: string, log: Log, locks: FileLocks | null, why: string) {
    this.#db = db;
    this.#log = log;
    this.#locks = locks;
    this.#why = why;
  }

  /** Loads the locks (unless `enabled` is false) and says once how walship runs. */
  static async create(db: string, enabled: boolean, log: Log): Promise<PinKeeper> {
    if (!enabled) {
      log.warn("running unpinned (--no-pin): WAL restarts can outrun walship; the commit ledger detects it and heals", { db });
      return new PinKeeper(db, log, null, "unpinned (--no-pin)");
    }
    const locks = await loadFileLocks();
    if (typeof locks === "string") {
      log.warn(`running unpinned: ${locks}; the commit ledger detects missed commits and heals`, { db });
      return new PinKeeper(db, log, null, `unpinned: ${locks}`);
    }
    return new PinKeeper(db, log, locks, "waiting for the -shm");
  }

  /** True when walship takes part in SQLite's locking at all. */
  get enabled(): boolean {
    return this.#locks !== null;
  }

  /** True while the read slot is held. */
  get holding(): boolean {
    return this.#pin?.slot != null;
  }

  /** For status and logs: "held (READ_LOCK 2)", "let go", "unpinned: …", … */
  get state(): string {
    if (!this.#locks) return this.#why;
    if (!this.#pin) return this.#why;
    return this.#pin.slot !== null ? `held (READ_LOCK ${this.#pin.slot})` : "let go";
  }

  /**
   * Takes the locks, trying for up to `waitMs` while another connection holds
   * the database exclusively. Throws NOT_WAL when it keeps holding it
   * (`locking_mode=EXCLUSIVE`).
   */
  async start(waitMs = 2000): Promise<void> {
    if (!this.#locks) return;
    const until = Date.now() + waitMs;
    for (;;) {
      try {
        this.#tryOpen();
        return;
      } catch (err) {
        if (!(err instanceof WalshipError) || Date.now() >= until) throw err;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * One round, after the follower has read the WAL: lets the slot go when
   * that is safe and useful, and takes it back as soon as it has served.
   * `flushAll` puts every transaction read into the local cache (called
   * before letting go).
   */
  async tick(follower: WalFollower, flushAll: () => void): Promise<void> {
    if (!this.ensurePinned()) return;
    const pin = this.#pin!;
    const shm = readWalIndexFile(`${this.#db}-shm`);
    if (!shm) return;
    if (pin.slot === null) {
      this.#holdAgain(shm.readMarks);
      return;
    }
    const mark = shm.readMarks[pin.slot];
    const left = pin.moveToBetterSlot(shm.readMarks);
    if (left !== null) {
      this.#log.debug("pin moved to a read slot that does not hold back backfill", { db: this.#db, from: left, mark, slot: pin.slot });
    }
    const pos = follower.position;
    // An empty WAL (just truncated) holds nothing to read, whatever epoch the follower was last in.
    const caughtUp = shm.mxFrame === 0 ||
      (pos !== null && shm.salt1 === pos.salt1 && shm.salt2 === pos.salt2 && shm.mxFrame === pos.frame);
    if (!caughtUp || shm.nBackfill !== shm.mxFrame) return;
    const waiting = pin.checkpointerWaiting();
    if (!waiting && shm.mxFrame < RESTART_AFTER_FRAMES) return;
    const shmPath = `${this.#db}-shm`;
    // Every transaction read goes to the local cache first. Then backfill is
    // kept out while the slot is let go (READ_LOCK(0), shared): the WAL is
    // fully backfilled, so it can restart once (a checkpointer needs no
    // backfill, only the slot), but the new one cannot be backfilled, so no
    // writer can restart it again, however late this process gets to run (a
    // writer needs a millisecond or two to fill, backfill and restart a WAL,
    // and the kernel does not hand a released lock to a waiter). Once
    // backfill is out, the WAL must still be the one read to its end.
    flushAll();
    if (!pin.keepBackfillOut()) return;
    const now = readWalIndexFile(shmPath);
    if (!now || now.salt1 !== shm.salt1 || now.salt2 !== shm.salt2 || now.mxFrame !== shm.mxFrame || now.nBackfill !== now.mxFrame) {
      pin.letBackfillIn();
      return;
    }
    pin.letGo();
    const since = Date.now();
    // Frames the checkpointer would have to backfill first mean the slot was let go too early (the
    // WRITE lock seen was a writer's): take it back and let backfill in, or both would wait.
    const backfillWanted = () => {
      const h = readWalIndexFile(shmPath);
      return h !== null && h.nBackfill < h.mxFrame;
    };
    if (waiting) {
      // The checkpointer holds WRITE: nothing can be committed until it is done.
      this.counts.forCheckpoint++;
      while (pin.checkpointerWaiting() && !backfillWanted() && Date.now() - since < CHECKPOINT_WAIT_MS) await sleep(1);
    } else {
      // A short window in which the next writer may restart the WAL.
      this.counts.forRestart++;
      await sleep(RESTART_WINDOW_MS);
    }
    // Backfill comes back only with the slot (a writer restarting the WAL holds every slot for a moment).
    while (!pin.hold(readWalIndexFile(shmPath)?.readMarks ?? shm.readMarks) && Date.now() - since < HOLD_RETRY_MS) await sleep(1);
    if (pin.slot === null) this.#log.debug("every read slot is busy; will pin again next round", { db: this.#db });
    pin.letBackfillIn();
    this.#log.debug(waiting ? "pin let go for a waiting checkpoint" : "pin let go so the WAL can restart", {
      db: this.#db,
      frames: shm.mxFrame,
      ms: Date.now() - since,
      slot: pin.slot,
    });
  }

  /** Lets the slot go now (the caller has read and cached everything). */
  letGoNow(): void {
    this.#pin?.letGo();
  }

  /** Takes the slot back now, if the pin is open. */
  holdNow(): void {
    if (this.#pin && this.#pin.slot === null) {
      this.#holdAgain(readWalIndexFile(`${this.#db}-shm`)?.readMarks ?? NO_READ_MARKS);
    }
  }

  #holdAgain(readMarks: number[]): void {
    if (!this.#pin!.hold(readMarks)) this.#log.debug("every read slot is busy; will pin again next round", { db: this.#db });
  }

  /**
   * Takes the pin if it is not held yet and the -shm exists (some connection
   * has the database open in WAL mode). False while there is nothing to pin.
   */
  ensurePinned(): boolean {
    if (!this.#locks) return false;
    if (this.#pin) return true;
    try {
      this.#tryOpen();
    } catch (err) {
      if (!this.#saidExclusive) this.#log.error(errorMessage(err), { db: this.#db });
      this.#saidExclusive = true;
    }
    return this.#pin !== null;
  }

  /** Drops every lock. */
  close(): void {
    this.#pin?.close();
    this.#pin = null;
  }

  #tryOpen(): void {
    const pin = WalPin.open(this.#locks!, this.#db);
    if (!pin) return;
    const shm = readWalIndexFile(`${this.#db}-shm`);
    pin.hold(shm?.readMarks ?? NO_READ_MARKS);
    this.#pin = pin;
    this.#log.info("pinned: the WAL cannot restart or be deleted before walship has read it", {
      db: this.#db,
      slot: pin.slot,
    });
  }
}
