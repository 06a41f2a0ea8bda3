/**
 * Follows a live WAL: hands out each committed, validated transaction once,
 * in order, and says when it can no longer prove that nothing was missed.
 *
 * Within one WAL epoch frames only ever get appended, so scanning on from
 * the last position cannot miss a commit. Across an epoch change (a WAL
 * restart or truncation) it can: the new epoch may have overwritten frames
 * not yet read. The commit ledger (DESIGN.md) settles it: the wal-index
 * header's iChange counts every commit. Whenever the -shm header describes a
 * frame this follower has read, the pair (iChange, commits read since the
 * last pairing) must add up; a shortfall means commits were never read, and
 * iChange going backwards means the -shm was rebuilt. Either way the
 * follower reports `lost` instead of handing out transactions that would
 * build a state that never existed (invariants 1 and 4).
 *
 * @module
 */

import fs from "node:fs";
import type { WalTransaction, WalPosition } from "../sqlite/wal_scanner.ts";
import { readWalHeader, sameEpoch, scanFrames, verifyPosition } from "../sqlite/wal_scanner.ts";
import type { WalHeader } from "../sqlite/wal.ts";
import { encodeWalHeader } from "../sqlite/wal.ts";
import type { WalIndexHeader } from "../sqlite/wal_index.ts";
import { fileSignature, type OpenFile, openReadOnly, readWalIndexFile } from "./file_source.ts";

/** A committed transaction with the time it was observed and its raw frames. */
export interface ObservedTransaction extends WalTransaction {
  frames: Uint8Array;
  /** Unix ms when the follower read it. */
  time: number;
}

/** What one {@linkcode WalFollower.poll} found. */
export interface FollowResult {
  /**
   * New committed transactions, in order. Their frames are read into
   * buffers the follower reuses: valid until its next poll, so copy what
   * must outlive it.
   */
  transactions: ObservedTransaction[];
  /** The 32-byte header of a new epoch the transactions start, if they start one. */
  epochHeader: Uint8Array | null;
  /** Set when continuity cannot be proven: why. No transactions are returned then. */
  lost: string | null;
  /** True when more committed bytes are waiting (the scan hit its size limit). */
  more: boolean;
}

/** Options for {@linkcode WalFollower}. */
export interface FollowerOptions {
  /** Most frame bytes one poll returns; default 4 MiB (the buffers they are read into are kept). */
  maxBytes?: number;
  /** Clock, for tests. */
  now?: () => number;
}

/** Follows the WAL of one database. */
export class WalFollower {
  readonly walPath: string;
  readonly shmPath: string;
  #position: WalPosition | null;
  #dbSize = 0;
  #pageSize = 0;
  #bigEndian = false;
  #wal: OpenFile | null = null;
  #walIno = -1;
  #shmIdentity = "";
  /** iChange at the last pairing, and commits handed out since then. */
  #pairedIChange: number | null = null;
  #sincePairing = 0;
  #maxBytes: number;
  #now: () => number;
  #retries = 0;
  #baseDbSignature: string | null = null;
  #buffers = new ReadBuffers();
  readonly dbPath: string;

  constructor(dbPath: string, position: WalPosition | null, options: FollowerOptions = {}) {
    this.dbPath = dbPath;
    this.walPath = `${dbPath}-wal`;
    this.shmPath = `${dbPath}-shm`;
    this.#position = position;
    this.#maxBytes = options.maxBytes ?? 4 << 20;
    this.#now = options.now ?? Date.now;
  }

  /** Position after the last transaction handed out (null before any WAL was seen). */
  get position(): WalPosition | null {
    return this.#position;
  }

  /** Database size in pages after the last transaction handed out (0 when unknown). */
  get dbSize(): number {
    return this.#dbSize;
  }

  /** Page size of the WAL being followed (0 when unknown). */
  get pageSize(): number {
    return this.#pageSize;
  }

  /** Checksum byte order of the epoch at the position. */
  get bigEndian(): boolean {
    return this.#bigEndian;
  }

  /** True when the ledger has a pairing: an epoch change can then be proven. */
  get paired(): boolean {
    return this.#pairedIChange !== null;
  }

  /**
   * Sets the position after a snapshot or a repair: the new base, trusted
   * without proof because the caller captured the state it stands for.
   */
  rebase(position: WalPosition | null, dbSize: number, pageSize: number, bigEndian = this.#bigEndian): void {
    this.#position = position;
    this.#bigEndian = bigEndian;
    this.#dbSize = dbSize;
    this.#pageSize = pageSize;
    this.#retries = 0;
    if (position === null) this.#pairedIChange = null;
    // With no WAL at the base, the database file itself must stay untouched
    // until a WAL appears: any checkpoint in between means unread commits.
    this.#baseDbSignature = position === null ? fileSignature(this.dbPath) : null;
  }

  /**
   * True when the WAL still holds the recorded position (same epoch, frame
   * intact): resuming there cannot miss a commit (invariant 2).
   */
  verifyResume(): boolean {
    if (this.#position === null) return false;
    const wal = this.#openWal();
    if (!wal) return false;
    const header = readWalHeader(wal);
    return header !== null && verifyPosition(wal, header, this.#position);
  }

  /**
   * Reads what was committed since the last poll. With `baseline`, an epoch
   * change is accepted without proof (the caller is taking a snapshot that
   * stands for everything before).
   */
  poll(options: { baseline?: boolean } = {}): FollowResult {
    const baseline = options.baseline ?? false;
    this.#buffers.reuse();
    // The -shm is read before the WAL: every frame up to its mxFrame is then
    // already in the file, so a scan below covers it and can pair with it.
    const shm = this.#readShm();
    const wal = this.#openWal();
    const header = wal ? readWalHeader(wal) : null;
    if (!wal && this.#position !== null && !baseline) {
      // The WAL we were following is gone: its last connection closed, which
      // checkpoints it into the database and deletes it together with the
      // -shm, so neither the frames nor the ledger can show what went unread.
      return nothing("the WAL was deleted (its last connection closed) before every commit in it was proven read");
    }
    if (!wal || !header) {
      // With no WAL at the base, the database file can only change through a
      // WAL that came, was checkpointed on close and went between two polls.
      if (!baseline && this.#position === null && this.#baseDbSignature !== null &&
        fileSignature(this.dbPath) !== this.#baseDbSignature) {
        return nothing("the database file changed while no WAL was present (a checkpoint of unread commits)");
      }
      // No WAL content: a TRUNCATE checkpoint, or no connection open. The
      // ledger can still tell whether commits went by unread.
      if (shm && shm.mxFrame === 0) {
        if (baseline) {
          this.#pairedIChange = shm.iChange;
          this.#sincePairing = 0;
        } else if (this.#pairedIChange !== null) {
          const verdict = this.#checkLedger(shm.iChange, 0);
          if (verdict) return nothing(verdict);
        }
      }
      return nothing(null);
    }
    if (!baseline && this.#pageSize !== 0 && header.pageSize !== this.#pageSize) {
      return nothing(`the page size changed from ${this.#pageSize} to ${header.pageSize}`);
    }
    const from = this.#position;
    const newEpoch = from === null || !sameEpoch(from, header);
    if (newEpoch && from !== null && !baseline) {
      // The WAL restarted. Frames of the old epoch past our position may still
      // be on disk behind the new ones; those that continue our checksum chain
      // up to a commit are commits SQLite made: read them first.
      const tail = this.#readOldTail(wal, header, from);
      if (tail) return tail;
    }
    if (newEpoch && !baseline) {
      const verdict = this.#proveEpoch(wal, header, shm);
      if (verdict === RETRY) {
        if (++this.#retries <= MAX_PROOF_RETRIES) return nothing(null);
        return nothing("the WAL restarted and the wal-index never described it: continuity cannot be proven");
      }
      if (verdict !== null) return nothing(verdict);
    }
    this.#retries = 0;
    const scan = scanFrames(wal, header, newEpoch ? null : from, { collect: true, maxBytes: this.#maxBytes, chunk: this.#buffers.take });
    const txs = scan.transactions;
    this.#pairOpportunistically(shm, header, newEpoch ? 0 : from!.frame, scan.position.frame, txs);
    if (txs.length > 0 || newEpoch) {
      this.#position = scan.position;
      this.#baseDbSignature = null;
    }
    if (txs.length > 0) this.#dbSize = txs[txs.length - 1].dbSize;
    this.#pageSize = header.pageSize;
    this.#bigEndian = header.bigEndian;
    const time = this.#now();
    return {
      transactions: txs.map((t) => ({ ...t, frames: t.frames!, time })),
      epochHeader: newEpoch ? encodeWalHeader(header) : null,
      lost: null,
      more: scan.stop === "limit",
    };
  }

  /** Committed transactions of the old epoch still intact after `from`, or null when none. */
  #readOldTail(wal: OpenFile, current: WalHeader, from: WalPosition): FollowResult | null {
    const old: WalHeader = {
      ...current,
      bigEndian: this.#bigEndian,
      salt1: from.salt1,
      salt2: from.salt2,
      checksum1: from.checksum1,
      checksum2: from.checksum2,
    };
    const scan = scanFrames(wal, old, from, { collect: true, maxBytes: this.#maxBytes, chunk: this.#buffers.take });
    if (scan.transactions.length === 0) return null;
    this.#position = scan.position;
    this.#sincePairing += scan.transactions.length;
    this.#dbSize = scan.transactions[scan.transactions.length - 1].dbSize;
    const time = this.#now();
    return {
      transactions: scan.transactions.map((t) => ({ ...t, frames: t.frames!, time })),
      epochHeader: null,
      lost: null,
      more: true, // the new epoch comes next
    };
  }

  /**
   * Proves that moving to the epoch `header` starts misses no commit: null
   * when proven, RETRY when the -shm does not describe it yet, or the reason.
   */
  #proveEpoch(wal: OpenFile, header: WalHeader, shm: WalIndexHeader | null): string | null | typeof RETRY {
    if (this.#position === null) {
      const now = fileSignature(this.dbPath);
      if (this.#baseDbSignature === null || now !== this.#baseDbSignature) {
        return "the database file changed while no WAL was present (a checkpoint of unread commits)";
      }
      if (this.#pairedIChange === null) return null; // the file is untouched: every commit since is in this WAL
    }
    if (this.#pairedIChange === null) return "the WAL restarted before the commit ledger could be paired";
    if (!shm || shm.salt1 !== header.salt1 || shm.salt2 !== header.salt2) return RETRY;
    const probe = scanFrames(wal, header, null);
    if (shm.mxFrame > probe.position.frame) return RETRY;
    const upTo = probe.transactions.filter((t) => t.lastFrame <= shm.mxFrame);
    if (shm.mxFrame !== 0 && upTo.at(-1)?.lastFrame !== shm.mxFrame) return RETRY;
    const verdict = this.#checkLedger(shm.iChange, upTo.length);
    if (verdict !== null) return verdict;
    // Paired at mxFrame; the epoch's first upTo commits are still to be handed out.
    this.#pairedIChange = shm.iChange;
    this.#sincePairing = -upTo.length;
    return null;
  }

  /** Pairs iChange with a frame this scan reached, when the -shm describes one. */
  #pairOpportunistically(
    shm: WalIndexHeader | null,
    header: WalHeader,
    start: number,
    end: number,
    txs: WalTransaction[],
  ): void {
    this.#sincePairing += txs.length;
    if (!shm || shm.salt1 !== header.salt1 || shm.salt2 !== header.salt2) return;
    if (shm.mxFrame < start || shm.mxFrame > end) return;
    const upTo = txs.filter((t) => t.lastFrame <= shm.mxFrame).length;
    if (shm.mxFrame !== start && txs[upTo - 1]?.lastFrame !== shm.mxFrame) return;
    // Within one epoch the frames themselves prove continuity, so even a
    // mismatch here (an -shm rebuilt over the same WAL) just re-bases the ledger.
    this.#pairedIChange = shm.iChange;
    this.#sincePairing = txs.length - upTo;
  }

  close(): void {
    this.#wal?.close();
    this.#wal = null;
  }

  /** null when iChange agrees with the commits handed out; otherwise why not. */
  #checkLedger(iChange: number, readSince: number): string | null {
    const expected = (this.#pairedIChange! + this.#sincePairing + readSince) >>> 0;
    if (iChange === expected) return null;
    const missed = (iChange - expected) >>> 0;
    if (missed < 0x80000000) return `${missed} commit(s) went by unread (the WAL restarted before they were read)`;
    return "the wal-index was rebuilt (iChange went backwards): continuity cannot be proven";
  }

  #readShm(): WalIndexHeader | null {
    let identity: string;
    try {
      const st = fs.statSync(this.shmPath);
      identity = `${st.ino}:${st.birthtimeMs}`;
    } catch {
      return null;
    }
    if (identity !== this.#shmIdentity) {
      // A new -shm file: SQLite rebuilt the wal-index, and iChange started over.
      this.#pairedIChange = null;
      this.#shmIdentity = identity;
    }
    return readWalIndexFile(this.shmPath);
  }

  #openWal(): OpenFile | null {
    let ino: number;
    try {
      ino = fs.statSync(this.walPath).ino;
    } catch {
      this.close();
      return null;
    }
    if (this.#wal && ino === this.#walIno) return this.#wal;
    this.close();
    this.#wal = openReadOnly(this.walPath);
    this.#walIno = ino;
    return this.#wal;
  }
}

const RETRY = Symbol("retry");
const MAX_PROOF_RETRIES = 20;

function nothing(lost: string | null): FollowResult {
  return { transactions: [], epochHeader: null, lost, more: false };
}

/**
 * The buffers a poll reads the WAL into, kept for the next poll: a busy
 * writer's WAL is read at over 100 MB a second, and fresh buffers cost the
 * kernel a zeroed page every 4 KiB (a third of walship's page faults in
 * workload 1 of the benchmarks). Only the buffers the last poll took are
 * kept, so a database gone quiet holds none.
 */
class ReadBuffers {
  #kept: Uint8Array[] = [];
  #taken: Uint8Array[] = [];

  /** `size` bytes of a kept buffer large enough, or of a new one. */
  take = (size: number): Uint8Array => {
    const i = this.#kept.findIndex((b) => b.length >= size);
    const buffer = i >= 0 ? this.#kept.splice(i, 1)[0] : new Uint8Array(size);
    this.#taken.push(buffer);
    return buffer.subarray(0, size);
  };

  /** The buffers taken since the last call may be read into again; the others are let go. */
  reuse(): void {
    this.#kept = this.#taken;
    this.#taken = [];
  }
}
