/**
 * Retention: states older than the window go, every state inside it stays
 * restorable, the latest state always stays, and an older generation is
 * never deleted before the current one has a snapshot in the replica.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { snapshotKey, segmentKey } from "../src/replica/layout.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { Replicator, type ReplicatorEvent } from "../src/replicate/replicator.ts";
import { enforceRetention } from "../src/replicate/retention.ts";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { test } from "./_runtime.ts";
import { assertSameFile, openRuntimeWriter, runtimeTransaction, testSeed } from "./_replication_fixtures.ts";
import { prng, sleep, withTempDir } from "./_util.ts";

const H = 3_600_000;
const T0 = Date.UTC(2026, 10, 1);
const gen = (hoursAfter: number, tag: string) =>
  new Date(T0 + hoursAfter * H).toISOString().replace(/[-:]/g, "").replace(".", "") + "-" + tag;
const seg = (g: string, first: number, last: number, t: number) =>
  segmentKey(g, { firstTxid: first, lastTxid: last, firstTime: t, lastTime: t });

test("retention: keeps the newest snapshot at or before the cutoff and all after it; old generations go only after the current one has a snapshot", async () => {
  await withTempDir("retention-unit", async (dir) => {
    const storage = openReplica(path.join(dir, "replica"));
    const old = gen(0, "00000001");
    const cur = gen(10, "00000002");
    const put = (key: string) => storage.put(key, new Uint8Array([1]));
    // The old generation: last state at T0 + 5 h.
    for (const k of [snapshotKey(old, 1, T0), seg(old, 2, 5, T0 + 5 * H)]) await put(k);
    // The current one, no snapshot yet: nothing may go, whatever the window.
    await put(seg(cur, 7, 8, T0 + 11 * H));
    assert.deepEqual(await enforceRetention(storage, cur, 1 * H, T0 + 100 * H), { generations: 0, objects: 0 });
    assert.equal((await listGenerations(storage)).length, 2);

    // Snapshots at 10 h, 20 h, 30 h; segments between.
    for (
      const k of [
        snapshotKey(cur, 6, T0 + 10 * H),
        seg(cur, 9, 12, T0 + 15 * H),
        snapshotKey(cur, 12, T0 + 20 * H),
        seg(cur, 13, 20, T0 + 25 * H),
        snapshotKey(cur, 20, T0 + 30 * H),
        seg(cur, 21, 22, T0 + 31 * H),
      ]
    ) await put(k);
    // Window of 8 h at 32 h: cutoff 24 h. The base is the snapshot at 20 h (txid 12).
    const r = await enforceRetention(storage, cur, 8 * H, T0 + 32 * H);
    assert.deepEqual(r, { generations: 1, objects: 2 + 3 }, "old: both objects; current: snapshot 6, segments 7-8 and 9-12");
    assert.deepEqual(await listGenerations(storage), [cur]);
    const left = await listGeneration(storage, cur);
    assert.deepEqual(left.snapshots.map((s) => s.txid), [12, 20]);
    assert.deepEqual(left.segments.map((s) => [s.firstTxid, s.lastTxid]), [[13, 20], [21, 22]]);

    // A window shorter than the newest snapshot's age keeps that snapshot and what follows.
    await enforceRetention(storage, cur, 1, T0 + 1000 * H);
    const last = await listGeneration(storage, cur);
    assert.deepEqual(last.snapshots.map((s) => s.txid), [20]);
    assert.deepEqual(last.segments.map((s) => s.lastTxid), [22]);
  });
});

test("retention: a live replicator forgets old states, and what it keeps restores exactly", async () => {
  await withTempDir("retention-live", async (dir) => {
    const db = path.join(dir, "app.db");
    const url = pathToFileURL(path.join(dir, "replica")).href;
    const storage = openReplica(url);
    const con = await openRuntimeWriter(db);
    const rand = prng(testSeed());
    const events: ReplicatorEvent[] = [];
    const r = new Replicator(db, {
      storage,
      cacheDir: path.join(dir, "cache"),
      syncInterval: 50,
      snapshotInterval: 400,
      retention: 1000,
    });
    r.on((e) => events.push(e));
    await r.start();
    try {
      const start = Date.now();
      let k = 0;
      while (Date.now() - start < 3500) {
        runtimeTransaction(con, rand, ++k, []);
        await sleep(20);
      }
      await r.flush();
      await waitForPrune(events);
      // Stopped, so no later snapshot prunes again while the replica is checked (stop waits for a pass).
      await r.stop();
      const generation = r.status().generation!;
      const { snapshots, segments } = await listGeneration(storage, generation);
      assert.ok(events.some((e) => e.type === "retention" && e.objects > 0), "old objects were deleted");
      const oldest = snapshots[0];
      assert.ok(oldest.txid > 1, `the first snapshot (txid 1) is gone; oldest now ${oldest.txid}`);
      assert.ok(Date.now() - oldest.time < 1000 + 400 + 1500, "the oldest snapshot kept is not much older than the window");
      assert.ok(segments.every((s) => s.firstTxid > oldest.txid), "no segment before the oldest snapshot is left");
      const out = path.join(dir, "latest.db");
      const res = await restoreDatabase({ storage, output: out, target: {} });
      assert.equal(res.txid, r.status().txid);
      con.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      assertSameFile(out, db);
      // The oldest kept state still restores; one before it cannot.
      await restoreDatabase({ storage, output: path.join(dir, "oldest.db"), target: { txid: oldest.txid } });
      await assert.rejects(
        restoreDatabase({ storage, output: path.join(dir, "gone.db"), target: { txid: 1 } }),
        (err: Error & { code?: string }) => err.code === "NOT_FOUND",
      );
    } finally {
      await r.stop();
      con.close();
    }
  });
});

async function waitForPrune(events: ReplicatorEvent[]): Promise<void> {
  for (let i = 0; i < 100 && !events.some((e) => e.type === "retention"); i++) await sleep(50);
}
