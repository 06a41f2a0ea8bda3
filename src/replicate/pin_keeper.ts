/**
 * When to hold the pin and when to let it go (DESIGN.md, "The pin";
 * docs/DECISIONS.md, "The pin holds a real read mark").
 *
 * Held, the WAL cannot restart, so no frame can vanish before walship has
 * read it, and backfill stops at the slot's read mark, so the app's
 * automatic checkpoints cost it nothing. But a WAL that never restarts
 * grows, and an app's own RESTART or TRUNCATE checkpoint waits for the slot.
 * So the slot is let go:
 *
 * - for a waiting RESTART/TRUNCATE checkpointer (it holds the WRITE lock, so
 *   nothing new can be committed): once walship has read every committed
 *   frame and cached it; taken back once the checkpointer is done;
 * - for a restart window, once the WAL holds RESTART_AFTER_FRAMES frames, a
 *   segment has just been cut (so at most once per sync interval, and every
 *   transaction read is in the local cache) and walship has read all but
 *   RESTART_SLACK_FRAMES of the WAL: the app's next commit then backfills
 *   the whole WAL, the one after restarts it, and walship takes a slot back
 *   as soon as it sees the new epoch.
 *
 * Frames committed after walship's last read and before the restart are
 * still on disk past the new epoch's first frames: the follower reads that
 * old tail first, and the new WAL cannot overwrite it before it grows past
 * walship's old position (at least RESTART_AFTER_FRAMES frames). Once the
 * old WAL is fully backfilled, walship keeps backfill out, so the new WAL
 * can restart once but not twice. A busy writer's new WAL, once
 * backfilled, restarts again after its next ~1,000 frames, tens of
 * milliseconds: so a let-go slot is looked at every LOOK_EVERY_MS and
 * between the chunks of a long read, not only once per round. If walship
 * ever missed a restart, the commit ledger would say so and it would heal.
 * (docs/DECISIONS.md, "Restart windows".)
 *
 * @module
 */

import { readWalIndexFile } from "../capture/file_source.ts";
import { WalPin } from "../capture/pin.ts";
import type { WalFollower } from "../capture/wal_follower.ts";
import { errorMessage, WalshipError } from "../errors.ts";
import type { Log } from "../log.ts";
import { type FileLocks, loadFileLocks } from "../runtime.ts";
import { READ_MARK_UNUSED, type WalIndexHeader } from "../sqlite/wal_index.ts";
import { clearInterval, setImmediate, setInterval } from "node:timers";

/** Open a restart window once the WAL holds this many frames (SQLite's own autocheckpoint default). */
export const RESTART_AFTER_FRAMES = 1000;
/** A restart window opens only with at most this many committed frames not read yet. */
const RESTART_SLACK_FRAMES = 256;
/** A WAL this large, not caught up with, is cut early once so that a window can open. */
const CATCH_UP_FRAMES = 4 * RESTART_AFTER_FRAMES;
/** How long a round stays with a restart window it opened, watching for the restart, ms. */
const WINDOW_WAIT_MS = 20;
/** How long a restart window stays open across rounds when no restart came (an idle or paced writer), ms. */
const WINDOW_MAX_MS = 2000;
/**
 * How often a let-go slot is looked at while the rounds go on, ms. Once the
 * old WAL is backfilled and restarted, a busy writer's new WAL can be
 * backfilled and restart again after about 1,000 frames (its automatic
 * checkpoint): tens of milliseconds for 64 KiB transactions.
 */
const LOOK_EVERY_MS = 1;
/** Longest a waiting checkpointer is watched without yielding, ms. */
const CHECKPOINT_SPIN_MS = 150;
/** Longest wait for a checkpointer before taking the slot back anyway, ms. */
const CHECKPOINT_WAIT_MS = 5000;
/** Longest walship keeps trying to take a slot back after letting it go, ms. */
const HOLD_RETRY_MS = CHECKPOINT_WAIT_MS + 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Yields to other work without the timers' 1 ms floor: a let-go is watched closely. */
const yieldNow = () => new Promise((r) => setImmediate(r));

/** What the replicator tells a round of the pin keeper. */
export interface PinRound {
  /** True when every transaction read is in the local cache, or may be put there now (a segment is due). */
  segmentDue: boolean;
  /** Puts every transaction read into the local cache. */
  flushAll: () => void;
  /** Reads what was committed since, and puts it into the local cache. */
  catchUp: () => Promise<void>;
}

/** The slot let go: why, and the WAL it was let go on. */
interface LetGo {
  why: "restart" | "checkpoint";
  salt1: number;
  salt2: number;
  frames: number;
  iChange: number;
  since: number;
  /** Set once the let-go is over and the slot is being taken back. */
  over: boolean;
}

/** Holds, lets go of and takes back the pin of one database. */
export class PinKeeper {
  readonly #db: string;
  readonly #log: Log;
  #locks: FileLocks | null;
  #why: string;
  #pin: WalPin | null = null;
  #letGo: LetGo | null = null;
  #saidExclusive = false;
  /** Looks at a let-go slot every LOOK_EVERY_MS while one is let go. */
  #looker: ReturnType<typeof setInterval> | null = null;
  /** The WAL (salts and frames) a restart window was last let go on without a restart: not again until it changes. */
  #noRestartOn = "";
  /** Called when a look between rounds sees the WAL restart and takes the slot back: read again now. */
  onRestart: () => void = () => {};

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

  /**
   * True when the pin wants a round now: a restart window is open, the slot
   * is not held, or a checkpointer waits for it. Two lock tests at most: a
   * cheap look between rounds at an idle database.
   */
  needsRound(): boolean {
    if (!this.#pin) return this.#locks !== null;
    return this.#letGo !== null || this.#pin.slot === null || this.#pin.checkpointerWaiting();
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
   * that is useful, and takes it back as soon as it has served. Returns true
   * when the WAL just restarted: the follower should read again now (the
   * old epoch's tail first).
   */
  async tick(follower: WalFollower, round: PinRound): Promise<boolean> {
    if (!this.ensurePinned()) return false;
    const pin = this.#pin!;
    const shm = this.#readShm();
    if (this.#letGo) return this.#watchLetGo(shm);
    if (!shm) return false;
    if (pin.slot === null) {
      this.#holdAgain();
      return false;
    }
    if (pin.checkpointerWaiting()) {
      if (!(await this.#checkpointerSure(follower, shm))) return false;
      round.flushAll();
      const handed = await this.#handOver(shm);
      if (handed) return true;
      if (handed === false && pin.slot !== null) return false;
      // Its slot holds back the backfill and it could not move (no read marks, as with a -shm
      // walship may not write; or no free slot), or it found no slot to take back after the
      // checkpoint: let go, and watch closely. Once it has its slot, it backfills, restarts or
      // truncates the WAL and lets the writer go on within a few milliseconds, and an app with a
      // low autocheckpoint could restart the new WAL soon after: watched without yielding until
      // backfill is kept out or the slot is back (SQLite's busy handler sleeps at most 100 ms
      // between tries).
      this.#startLetGo("checkpoint", shm);
      let restarted = false;
      const until = Date.now() + CHECKPOINT_SPIN_MS;
      while (this.#letGo && !pin.backfillOut && Date.now() < until) {
        restarted = this.#watchLetGo(this.#readShm()) || restarted;
      }
      while (this.#letGo) {
        await yieldNow();
        // The looker may have ended the let-go meanwhile (and told onRestart).
        if (this.#letGo) restarted = this.#watchLetGo(this.#readShm()) || restarted;
      }
      return restarted;
    }
    if (shm.mxFrame < RESTART_AFTER_FRAMES || !round.segmentDue || walKey(shm) === this.#noRestartOn) return false;
    // Let go only with (nearly) every committed frame read: the frames not yet read must be read soon after
    // the restart, before the new WAL reaches them. A WAL grown large gets one early cut to catch up.
    let now: WalIndexHeader | null = shm;
    if (behind(follower, now) > RESTART_SLACK_FRAMES && now.mxFrame >= CATCH_UP_FRAMES) {
      await round.catchUp();
      now = this.#readShm();
    }
    if (!now || behind(follower, now) > RESTART_SLACK_FRAMES) return false;
    // Everything read goes to the local cache before the slot is let go.
    round.flushAll();
    this.#startLetGo("restart", now);
    // A busy writer restarts the WAL within a commit or two: watched closely, so the slot is back long
    // before the new WAL could reach the old one's unread tail, and without yielding until backfill
    // is kept out (until then the WAL could restart twice).
    const until = Date.now() + WINDOW_WAIT_MS;
    while (this.#letGo && Date.now() < until) {
      if (this.#watchLetGo(this.#readShm())) return true;
      if (this.#pin!.backfillOut) await yieldNow();
    }
    return false;
  }

  /**
   * Lets a waiting RESTART/TRUNCATE checkpointer through without a moment
   * in which the WAL could restart twice: walship moves to a slot marked at
   * the last frame (the checkpointer, which waited on the old slot, then
   * backfills everything and waits on the new one), keeps backfill out once
   * the WAL is fully backfilled, and only then lets the slot go. The new WAL
   * cannot be backfilled, so it cannot restart again before walship holds a
   * slot once more. Null when its slot stops the checkpointer's backfill and
   * it could not move (the slot is still held); false when no restart came
   * (the slot held then, if any, is a good one).
   */
  async #handOver(shm: WalIndexHeader): Promise<boolean | null> {
    const pin = this.#pin!;
    // Without read marks (a -shm walship may not write), or with no free slot, the slot stays. The
    // checkpointer still backfills everything when that slot's mark holds nothing back (unused, or
    // at the last frame), and the hand-over goes on; when the mark stops its backfill, it waits for
    // that slot, not for the restart: null.
    const moved = pin.moveToFreshMark(() => this.#readShm());
    const since = Date.now();
    const sameEpoch = (h: WalIndexHeader) => h.salt1 === shm.salt1 && h.salt2 === shm.salt2;
    for (;;) {
      const h = this.#readShm();
      // A commit: the WRITE lock seen was a writer's after all. Or the checkpointer gave up.
      if (!h || h.iChange !== shm.iChange || !sameEpoch(h) || !pin.checkpointerWaiting()) return false;
      if (h.nBackfill === h.mxFrame && pin.keepBackfillOut()) {
        const again = this.#readShm();
        if (again && sameEpoch(again) && again.nBackfill === again.mxFrame) break;
        pin.letBackfillIn();
      }
      const mark = h.readMarks[pin.slot!];
      if (!moved && mark !== READ_MARK_UNUSED && mark < h.mxFrame && h.nBackfill >= mark) return null;
      if (Date.now() - since >= CHECKPOINT_WAIT_MS) return moved ? false : null;
      await sleep(1);
    }
    pin.letGo();
    let restarted = false;
    while (Date.now() - since < HOLD_RETRY_MS) {
      const h = this.#readShm();
      restarted ||= h !== null && !sameEpoch(h);
      // It holds every slot while it restarts or truncates the WAL, and the WRITE lock until done.
      if ((restarted || !pin.checkpointerWaiting() || Date.now() - since >= CHECKPOINT_WAIT_MS) && pin.hold(() => this.#readShm())) break;
      await sleep(1);
    }
    pin.letBackfillIn();
    if (pin.slot === null) this.#log.debug("every read slot is busy; will pin again next round", { db: this.#db });
    this.#log.debug("pin handed over to a waiting checkpoint", { db: this.#db, frames: shm.mxFrame, restarted, ms: Date.now() - since, slot: pin.slot });
    return restarted;
  }

  #readShm(): WalIndexHeader | null {
    return readWalIndexFile(`${this.#db}-shm`);
  }

  /**
   * A RESTART/TRUNCATE checkpointer seems to wait for the slot. It holds the
   * WRITE lock, so once walship has read every committed frame nothing can
   * go unread while it is let go. But the two lock tests are not one atomic
   * look: a writer's commit (WRITE) followed by its automatic checkpoint
   * (CKPT) can pass for a waiting checkpointer. So the look is repeated a
   * moment later, and nothing may have been committed in between (a real
   * one holds WRITE throughout).
   */
  async #checkpointerSure(follower: WalFollower, shm: WalIndexHeader): Promise<boolean> {
    const pos = follower.position;
    // An empty WAL (just truncated) holds nothing to read, whatever epoch the follower was last in.
    const caughtUp = shm.mxFrame === 0 ||
      (pos !== null && shm.salt1 === pos.salt1 && shm.salt2 === pos.salt2 && shm.mxFrame === pos.frame);
    if (!caughtUp) return false;
    await sleep(1);
    // Any commit, restart or truncation bumps iChange.
    return this.#readShm()?.iChange === shm.iChange && this.#pin!.checkpointerWaiting();
  }

  #startLetGo(why: LetGo["why"], shm: WalIndexHeader): void {
    this.#pin!.letGo();
    this.#letGo = { why, salt1: shm.salt1, salt2: shm.salt2, frames: shm.mxFrame, iChange: shm.iChange, since: Date.now(), over: false };
    this.#looker ??= setInterval(() => this.look(), LOOK_EVERY_MS);
  }

  /**
   * One look at a let-go slot, between rounds or from the round's own long
   * loops (a round that reads a large WAL does not yield for a while).
   * Nothing when the slot is held.
   */
  look(): void {
    if (this.#letGo && this.#pin && this.#watchLetGo(this.#readShm())) this.onRestart();
    if (!this.#letGo && this.#looker) {
      clearInterval(this.#looker);
      this.#looker = null;
    }
  }

  /**
   * One look at a let-go slot. Keeps backfill out whenever the WAL is fully
   * backfilled (the WAL can then restart once, not twice), lets it in again
   * when that WAL got frames without restarting (so it can be backfilled and
   * restart), and takes the slot back once the let-go has served. Returns
   * true once the slot is back after a restart.
   */
  #watchLetGo(h: WalIndexHeader | null): boolean {
    const pin = this.#pin!;
    const g = this.#letGo!;
    const restarted = h !== null && (h.salt1 !== g.salt1 || h.salt2 !== g.salt2 || h.mxFrame < g.frames);
    if (h) {
      if (!pin.backfillOut && h.nBackfill === h.mxFrame) {
        // Checked again once held: the frames seen backfilled must still be all there are.
        if (pin.keepBackfillOut() && this.#readShm()?.nBackfill !== h.mxFrame) pin.letBackfillIn();
      } else if (pin.backfillOut && !restarted && h.nBackfill !== h.mxFrame) {
        pin.letBackfillIn(); // a commit that did not restart the WAL: it must be backfilled first
      }
    }
    const age = Date.now() - g.since;
    if (!g.over) {
      g.over = restarted ||
        (g.why === "restart"
          ? age >= WINDOW_MAX_MS
          : !pin.checkpointerWaiting() || h === null || h.iChange !== g.iChange || age >= CHECKPOINT_WAIT_MS);
      if (!g.over) return false;
    }
    // A writer restarting the WAL, or a checkpointer, holds every slot for a moment.
    if (!pin.hold(() => this.#readShm()) && age < HOLD_RETRY_MS) return false;
    if (pin.slot === null) this.#log.debug("every read slot is busy; will pin again next round", { db: this.#db });
    pin.letBackfillIn();
    this.#letGo = null;
    this.#noRestartOn = g.why === "restart" && !restarted && h ? walKey(h) : "";
    this.#log.debug(g.why === "restart" ? "pin let go so the WAL can restart" : "pin let go for a waiting checkpoint", {
      db: this.#db,
      frames: g.frames,
      restarted,
      ms: age,
      slot: pin.slot,
    });
    return restarted;
  }

  /** Lets the slot go now (the caller has read and cached everything). */
  letGoNow(): void {
    this.#pin?.letGo();
  }

  /** Takes the slot back now, if the pin is open. */
  holdNow(): void {
    if (this.#pin && this.#pin.slot === null) this.#holdAgain();
  }

  #holdAgain(): void {
    if (!this.#pin!.hold(() => this.#readShm())) {
      this.#log.debug("every read slot is busy; will pin again next round", { db: this.#db });
    }
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
    this.#letGo = null;
    this.look(); // stops the looker
  }

  #tryOpen(): void {
    const pin = WalPin.open(this.#locks!, this.#db);
    if (!pin) return;
    pin.hold(() => this.#readShm());
    this.#pin = pin;
    this.#log.info("pinned: the WAL cannot restart or be deleted before walship has read it", {
      db: this.#db,
      slot: pin.slot,
      readMark: pin.marks,
    });
  }
}

/** How many committed frames of `shm`'s WAL the follower has not read (all of them in another epoch). */
function behind(follower: WalFollower, shm: WalIndexHeader): number {
  const pos = follower.position;
  if (!pos || pos.salt1 !== shm.salt1 || pos.salt2 !== shm.salt2) return shm.mxFrame;
  return shm.mxFrame - pos.frame;
}

/** Which WAL, and how far it goes: equal keys mean nothing was committed or restarted. */
function walKey(h: WalIndexHeader): string {
  return `${h.salt1}:${h.salt2}:${h.mxFrame}`;
}
