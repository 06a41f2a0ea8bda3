/**
 * A heal after walship was SIGKILLed (DESIGN.md invariant 4, docs/DECISIONS.md
 * "Healing instead of a new generation"), on both backends: while the
 * `walship replicate` subprocess is down, a Python writer commits 500
 * transactions to a 20 MiB database with a TRUNCATE checkpoint every 100, so
 * the WAL starts over five times and the recorded position is gone. The
 * restart heals: one warn line with the reason, the same generation goes on,
 * the heal ships exactly the pages that differ from the replicated state and
 * its object is a fraction of the database and of a snapshot; the heal's txid
 * restores the database as it was at the restart, byte for byte, and so does
 * the latest restore after more commits; sampled txids are states the
 * writer recorded, one commit each except at a heal.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { listGeneration } from "../src/restore/plan.ts";
import { test } from "./_runtime.ts";
import {
  assertContiguous,
  assertSameFile,
  BACKENDS,
  checkTxids,
  closeSharedS3,
  freshReplica,
  integrityCheck,
  readSideFile,
  replicaHeals,
  restoreTo,
  startReplicate,
  testSeed,
  type WalshipProcess,
  workloadState,
} from "./_replication_fixtures.ts";
import {
  differingPages,
  isHealLine,
  makeBulkDatabase,
  PAGE,
  segmentOf,
  waitForReplicaCommit,
  writeBatch,
} from "./_heal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

for (const backend of BACKENDS) {
  test(`${backend}: after a SIGKILL and 500 commits with WAL restarts, the restart heals with just the changed pages`, () =>
    withTempDir("heal-restart", async (dir) => {
      const seed = testSeed();
      const why = `(seed ${seed})`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const side = path.join(dir, "side.txt");
      const cacheDir = path.join(dir, "cache");
      makeBulkDatabase(db, 20);
      const bulkBytes = fs.statSync(db).size;
      const runs: WalshipProcess[] = [];
      try {
        // Replicating: the snapshot, then 100 commits shipped.
        runs.push(startReplicate(db, replica, { cacheDir }));
        await runs[0].waitForLog(/^replicating$/);
        const first = await writeBatch(db, { seed, side, transactions: 100 });
        const killedAt = await waitForReplicaCommit(replica, dir, first.commits, { cacheDir });
        await runs[0].kill();

        // Down: 500 commits, the WAL truncated five times.
        const atKill = path.join(dir, "at-kill.db");
        await restoreTo(replica, atKill, { txid: killedAt });
        assert.equal((await workloadState(atKill)).k, first.commits, "everything committed before the kill was shipped");
        const down = await writeBatch(db, { seed: seed + 1, side, transactions: 500, truncateEvery: 100 });
        assert.equal(down.checkpoints.truncate.length, 5);
        assert.ok(down.checkpoints.truncate.every(([busy]) => busy === 0), "nothing held the WAL while walship was down");
        const atRestart = path.join(dir, "at-restart.db");
        fs.copyFileSync(db, atRestart);
        const changed = differingPages(atKill, atRestart);
        const dbBytes = fs.statSync(atRestart).size;

        // The restart heals.
        runs.push(startReplicate(db, replica, { cacheDir }));
        await runs[1].waitForLog(/^replicating$/);
        const atStart = runs[1].log.filter(isHealLine);
        assert.equal(atStart.length, 1, `exactly one heal; stderr:\n${runs[1].stderr}`);
        const heal = atStart[0];
        assert.match(heal.message, /^continuity lost: the WAL no longer holds the last replicated position/);
        assert.equal(heal.fields.txid, killedAt + 1, "the heal is the next txid");
        assert.equal(heal.fields.pages, changed.length, `the heal ships exactly the ${changed.length} pages that differ ${why}`);
        assert.equal(heal.fields.of, dbBytes / PAGE);
        assert.deepEqual(runs[1].log.filter((l) => /generation|cannot/.test(l.message)), [], "no new generation");

        // More commits after the heal, then a clean stop.
        const after = await writeBatch(db, { seed: seed + 2, side, transactions: 50 });
        assert.equal(await runs[1].terminate(), 0, runs[1].stderr);

        const gens = await assertContiguous(replica);
        assert.equal(gens.length, 1, "the same generation went on");
        const { generation, segment } = await segmentOf(replica, killedAt + 1);
        assert.equal(generation, gens[0].generation);
        assert.deepEqual([segment.firstTxid, segment.lastTxid], [killedAt + 1, killedAt + 1], "the heal is an object of its own");
        const { snapshots } = await listGeneration(replica.storage, generation);
        assert.equal(snapshots.length, 1);
        const snapSize = snapshots[0].size;
        const changedBytes = changed.length * PAGE;
        assert.ok(changedBytes < dbBytes / 6, `the writes changed a small part of the database: ${changedBytes} of ${dbBytes}`);
        // 3,000 random bytes a 4 KiB page: a snapshot compresses to about 3/4 of the database.
        assert.ok(snapSize > bulkBytes * 0.7, `the snapshot of ${bulkBytes} bytes is ${snapSize} bytes`);
        assert.ok(
          segment.size <= changedBytes * 1.01 + 4096 && segment.size >= changedBytes * 0.5,
          `the heal object (${segment.size} bytes) is about the changed pages (${changedBytes} bytes) ${why}`,
        );
        assert.ok(segment.size < dbBytes / 6 && segment.size < snapSize / 4, `heal ${segment.size} bytes, database ${dbBytes}, snapshot ${snapSize}`);

        // Restores: the heal's txid is the database at the restart; the latest is the database now.
        const out = path.join(dir, "out.db");
        await restoreTo(replica, out, { txid: killedAt + 1 });
        assertSameFile(out, atRestart, `the heal's txid ${why}`);
        assert.equal((await workloadState(out)).k, down.commits);
        const latest = await restoreTo(replica, out);
        assertSameFile(out, db, `the latest restore ${why}`);
        assert.equal(await integrityCheck(out), "ok");
        assert.equal((await workloadState(out)).k, after.commits);
        // A fast writer can outrun even a pinned walship, which then heals again.
        const heals = await replicaHeals(replica, gens);
        assert.ok(heals.includes(killedAt + 1), "the heal is a 'P' record in the replica");
        if (heals.length === 1) assert.equal(latest.txid, killedAt + 1 + 50, "one txid per commit after the heal");
        await checkTxids(replica, gens, prng(seed), dir, { perGeneration: 4, txids: [killedAt, killedAt + 1], heals, side: readSideFile(side) });
      } finally {
        for (const p of runs) p.signal("SIGKILL");
      }
    }), { timeout: 120_000 });
}

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
