/**
 * Plans a restore from listings alone: which generation, which snapshot, and
 * which segments up to the target. Costs one LIST of the root plus one LIST
 * per generation looked at (newest first; usually one), paged by 1000 keys.
 *
 * @module
 */

import { WalshipError } from "../errors.ts";
import {
  generationTime,
  isGenerationId,
  parseObjectKey,
  type SegmentEntry,
  type SnapshotEntry,
} from "../replica/layout.ts";
import type { ReplicaStorage } from "../replica/storage.ts";

/** What to restore: the latest state, an exact txid, or the state at a time. */
export interface RestoreTarget {
  /** Exactly this txid. */
  txid?: number;
  /** The last transaction observed at or before this Unix ms time. */
  timestamp?: number;
  /** Only look in this generation. */
  generation?: string;
}

/** The objects a restore applies, in order. */
export interface RestorePlan {
  generation: string;
  snapshot: SnapshotEntry;
  /** Contiguous segments after the snapshot, possibly past the target (cut when applied). */
  segments: SegmentEntry[];
  /** Stop after this txid (null: apply every segment). */
  txid: number | null;
  /** Apply no transaction observed after this Unix ms time (null: no limit). */
  timestamp: number | null;
  /** Newer generations passed over because they hold no snapshot (yet). */
  skipped: string[];
}

/** A generation's objects as listed. */
export interface GenerationListing {
  generation: string;
  snapshots: SnapshotEntry[];
  segments: SegmentEntry[];
}

/** Lists the generations of a replica, oldest first. */
export async function listGenerations(storage: ReplicaStorage): Promise<string[]> {
  return (await storage.listChildren("")).filter(isGenerationId).sort();
}

/** Lists one generation's snapshots and segments, sorted by txid. */
export async function listGeneration(storage: ReplicaStorage, generation: string): Promise<GenerationListing> {
  const snapshots: SnapshotEntry[] = [];
  const segments: SegmentEntry[] = [];
  for (const o of await storage.list(`${generation}/`)) {
    const e = parseObjectKey(generation, o.key, o.size);
    if (e?.kind === "snapshot") snapshots.push(e);
    else if (e?.kind === "segment") segments.push(e);
  }
  snapshots.sort((a, b) => a.txid - b.txid);
  segments.sort((a, b) => a.firstTxid - b.firstTxid);
  return { generation, snapshots, segments };
}

/**
 * Finds what to download for `target`. Throws NO_BACKUP when the replica
 * is empty, NOT_FOUND when nothing matches the target, GAP when objects
 * between the snapshot and the target are missing.
 */
export async function planRestore(storage: ReplicaStorage, target: RestoreTarget = {}): Promise<RestorePlan> {
  let generations = await listGenerations(storage);
  if (target.generation) {
    if (!generations.includes(target.generation)) {
      throw new WalshipError("NOT_FOUND", `generation ${target.generation} is not in ${storage.location}`);
    }
    generations = [target.generation];
  }
  if (generations.length === 0) {
    throw new WalshipError(
      "NO_BACKUP",
      `replica ${storage.location} holds no backup: run walship replicate first, or pass --if-replica-exists`,
    );
  }
  let newestTxid: number | null = null;
  const skipped: string[] = [];
  for (const generation of [...generations].reverse()) {
    if (target.timestamp !== undefined && generationTime(generation) > target.timestamp) continue;
    const listing = await listGeneration(storage, generation);
    if (listing.snapshots.length === 0) {
      skipped.push(generation); // its first snapshot is still uploading, or was lost
      continue;
    }
    const maxTxid = Math.max(listing.snapshots.at(-1)!.txid, listing.segments.at(-1)?.lastTxid ?? 0);
    newestTxid ??= maxTxid;
    const plan = planInGeneration(listing, target);
    if (plan) return { ...plan, skipped };
    if (target.txid !== undefined && target.txid > maxTxid) break; // txids only grow: no older generation has it
  }
  if (target.txid !== undefined) {
    throw new WalshipError(
      "NOT_FOUND",
      `txid ${target.txid} is not in ${storage.location}` + (newestTxid === null ? "" : ` (the latest is ${newestTxid})`),
    );
  }
  if (target.timestamp !== undefined) {
    throw new WalshipError(
      "NOT_FOUND",
      `${storage.location} holds no state at or before ${new Date(target.timestamp).toISOString()}`,
    );
  }
  // Generations exist but none has a snapshot: a damaged replica, not an empty
  // one (the uploader sends a generation's snapshot before anything else), so
  // not NO_BACKUP, which --if-replica-exists would take for "nothing to restore".
  throw new WalshipError("GAP", `replica ${storage.location} holds no complete generation (no snapshot)`);
}

function planInGeneration(listing: GenerationListing, target: RestoreTarget): Omit<RestorePlan, "skipped"> | null {
  const { generation } = listing;
  let candidates = listing.snapshots;
  if (target.txid !== undefined) candidates = candidates.filter((s) => s.txid <= target.txid!);
  if (target.timestamp !== undefined) candidates = candidates.filter((s) => s.time <= target.timestamp!);
  const snapshot = candidates.at(-1);
  if (!snapshot) return null;
  const segments: SegmentEntry[] = [];
  let next = snapshot.txid + 1;
  for (const seg of listing.segments) {
    if (seg.lastTxid < next) continue;
    if (target.txid !== undefined && next > target.txid) break;
    if (target.timestamp !== undefined && seg.firstTime > target.timestamp) break;
    if (seg.firstTxid !== next) {
      throw new WalshipError(
        "GAP",
        `generation ${generation} misses transactions ${next}..${seg.firstTxid - 1} before ${seg.key}: the replica is incomplete`,
      );
    }
    segments.push(seg);
    next = seg.lastTxid + 1;
  }
  if (target.txid !== undefined && next <= target.txid) {
    if (target.txid > (listing.segments.at(-1)?.lastTxid ?? snapshot.txid)) return null;
    throw new WalshipError("GAP", `generation ${generation} misses transactions ${next}..${target.txid}`);
  }
  return {
    generation,
    snapshot,
    segments,
    txid: target.txid ?? null,
    timestamp: target.timestamp ?? null,
  };
}
