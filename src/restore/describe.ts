/**
 * What a replica holds, for `walship generations` and `walship snapshots`.
 *
 * @module
 */

import type { ReplicaStorage } from "../replica/storage.ts";
import { generationTime } from "../replica/layout.ts";
import { listGeneration, listGenerations } from "./plan.ts";

/** One generation's summary. */
export interface GenerationInfo {
  generation: string;
  /** Unix ms at creation. */
  created: number;
  snapshots: number;
  segments: number;
  firstTxid: number | null;
  lastTxid: number | null;
  /** Unix ms of the earliest and latest restorable states. */
  firstTime: number | null;
  lastTime: number | null;
  bytes: number;
}

/** One snapshot's summary. */
export interface SnapshotInfo {
  generation: string;
  txid: number;
  time: number;
  bytes: number;
  key: string;
}

/** Every generation of a replica, oldest first. */
export async function describeGenerations(storage: ReplicaStorage): Promise<GenerationInfo[]> {
  const out: GenerationInfo[] = [];
  for (const generation of await listGenerations(storage)) {
    const { snapshots, segments } = await listGeneration(storage, generation);
    const first = snapshots[0];
    const lastSeg = segments.at(-1);
    const lastSnap = snapshots.at(-1);
    out.push({
      generation,
      created: generationTime(generation),
      snapshots: snapshots.length,
      segments: segments.length,
      firstTxid: first?.txid ?? null,
      lastTxid: Math.max(lastSnap?.txid ?? 0, lastSeg?.lastTxid ?? 0) || null,
      firstTime: first?.time ?? null,
      lastTime: Math.max(lastSnap?.time ?? 0, lastSeg?.lastTime ?? 0) || null,
      bytes: [...snapshots, ...segments].reduce((n, e) => n + e.size, 0),
    });
  }
  return out;
}

/** Every snapshot of a replica, oldest first. */
export async function describeSnapshots(storage: ReplicaStorage): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = [];
  for (const generation of await listGenerations(storage)) {
    for (const s of (await listGeneration(storage, generation)).snapshots) {
      out.push({ generation, txid: s.txid, time: s.time, bytes: s.size, key: s.key });
    }
  }
  return out;
}
