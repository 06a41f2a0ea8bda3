/**
 * Retention: what a replica may forget. Every state observed within the
 * retention window stays restorable; older ones go. In the current
 * generation, the newest snapshot taken at or before the window's start is
 * the oldest base still needed: snapshots before it and segments it covers
 * are deleted. Older generations go once their last state is older than the
 * window, and only once the current generation has a snapshot in the
 * replica. The newest snapshot of the current generation is never deleted,
 * so the latest state stays restorable whatever the setting.
 *
 * @module
 */

import { listGeneration, listGenerations } from "../restore/plan.ts";
import type { ReplicaStorage } from "../replica/storage.ts";

/** What one pass deleted. */
export interface RetentionResult {
  generations: number;
  objects: number;
}

/**
 * Deletes what falls outside `retentionMs` before `now` from `storage`,
 * keeping everything of `current` newer than its oldest needed snapshot.
 *
 * @example
 * ```ts
 * await enforceRetention(storage, "20261121T090000000Z-0a1b2c3d", 24 * 3600_000);
 * ```
 */
export async function enforceRetention(
  storage: ReplicaStorage,
  current: string,
  retentionMs: number,
  now = Date.now(),
): Promise<RetentionResult> {
  const cutoff = now - retentionMs;
  const result: RetentionResult = { generations: 0, objects: 0 };
  // Until the current generation has a snapshot in this replica, older ones are all there is.
  if ((await listGeneration(storage, current)).snapshots.length === 0) return result;
  for (const generation of await listGenerations(storage)) {
    const { snapshots, segments } = await listGeneration(storage, generation);
    if (generation === current) {
      if (snapshots.length === 0) continue;
      // The newest snapshot at or before the cutoff can restore every state after it; none older is needed.
      const base = snapshots.filter((s) => s.time <= cutoff).at(-1) ?? snapshots[0];
      const keys = [
        ...snapshots.filter((s) => s.txid < base.txid).map((s) => s.key),
        ...segments.filter((s) => s.lastTxid <= base.txid).map((s) => s.key),
      ];
      if (keys.length > 0) await storage.delete(keys);
      result.objects += keys.length;
      continue;
    }
    if (generation > current) continue; // newer than ours: another writer's, never ours to judge
    const last = Math.max(0, ...snapshots.map((s) => s.time), ...segments.map((s) => s.lastTime));
    if (last > cutoff) continue;
    const keys = [...snapshots, ...segments].map((o) => o.key);
    // Segments first, then snapshots: an interrupted pass leaves restorable snapshots, not orphans.
    await storage.delete(segments.map((o) => o.key));
    await storage.delete(snapshots.map((o) => o.key));
    result.objects += keys.length;
    result.generations++;
  }
  return result;
}
