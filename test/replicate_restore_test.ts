/**
 * Replicate → restore, end to end, on both backends (a real s3rver bucket
 * and a directory) with the same test bodies:
 *
 * - a random workload (inserts, updates, deletes, blobs up to 64 KiB, tables
 *   and indexes created, altered and dropped) written with the runtime's own
 *   SQLite while an in-process Replicator ships it every 100 ms: the restore
 *   is the source byte for byte, at the latest txid and by `--txid`, and
 *   earlier txids hold exactly the contents the writer saw then;
 * - the application's own PASSIVE and TRUNCATE checkpoints and a VACUUM,
 *   from a separate Python writer: the final restore is the source byte for
 *   byte, and every repair or new generation comes with a logged reason.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { Replicator, type ReplicatorEvent } from "../src/replicate/replicator.ts";
import { test } from "./_runtime.ts";
import {
  assertContiguous,
  assertSameFile,
  BACKENDS,
  checkpoint,
  checkTxids,
  cliRestore,
  closeSharedS3,
  dumpDatabase,
  dumpFile,
  freshReplica,
  integrityCheck,
  openRuntimeWriter,
  PythonWriter,
  recordingLog,
  restoreTo,
  runtimeTransaction,
  testSeed,
  workloadState,
} from "./_replication_fixtures.ts";
import { between, prng, sleep, withTempDir } from "./_util.ts";

for (const backend of BACKENDS) {
  test(`${backend}: a random workload with schema changes restores byte for byte, latest and by txid`, () =>
    withTempDir("random-workload", async (dir) => {
      const seed = testSeed();
      const rand = prng(seed);
      const why = `(seed ${seed}, WALSHIP_TEST_SEED reproduces it)`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      // No automatic checkpoints: the WAL never restarts, so every commit must become exactly one txid.
      const con = await openRuntimeWriter(db, ["PRAGMA wal_autocheckpoint=0"]);
      const log = recordingLog();
      const replicator = new Replicator(db, { storage: replica.storage, cacheDir: path.join(dir, "cache"), syncInterval: 100, log });
      const events: ReplicatorEvent[] = [];
      replicator.on((e) => events.push(e));
      try {
        await replicator.start();
        assert.equal(replicator.status().txid, 1, "the first snapshot is txid 1");

        const commits = 400;
        const probes = new Map<number, string>();
        while (probes.size < 4) probes.set(between(rand, 1, commits), "");
        const extra: string[] = [];
        for (let k = 1; k <= commits; k++) {
          runtimeTransaction(con, rand, k, extra);
          if (probes.has(k)) probes.set(k, dumpDatabase(con));
          await sleep(rand() % 3);
        }
        await replicator.flush();
        const shipped = replicator.status();
        assert.equal(shipped.txid, 1 + commits, `every commit is one txid ${why}`);
        assert.equal(shipped.uploadedTxid, 1 + commits);
        assert.equal(shipped.pendingObjects, 0);
        assert.ok(shipped.segments >= 5, `a 100 ms sync interval ships many segments, got ${shipped.segments}`);

        // The db file alone now holds everything; the replicator notices the
        // truncated WAL but nothing new in it. The checkpoint runs on this very
        // thread, which could not let the pin go while it waits: hand it over.
        assert.deepEqual(await replicator.withPinReleased(() => checkpoint(con, "TRUNCATE")), [0, 0, 0]);
        await replicator.stop();
        const s = replicator.status();
        assert.equal(s.txid, 1 + commits);
        assert.equal(s.repairs, 0, `no repair without a WAL restart: ${JSON.stringify(events.filter((e) => e.type === "repair"))}`);
        assert.equal(s.snapshots, 1);
        assert.deepEqual(log.lines.filter((l) => l.level === "warn" || l.level === "error"), []);

        const gens = await assertContiguous(replica);
        assert.equal(gens.length, 1);
        assert.equal(gens[0].firstTxid, 1);
        assert.equal(gens[0].lastTxid, 1 + commits);

        const latest = path.join(dir, "latest.db");
        const r = await restoreTo(replica, latest);
        assert.equal(r.txid, 1 + commits);
        assertSameFile(latest, db);
        assert.equal(await integrityCheck(latest), "ok");

        const byTxid = path.join(dir, "by-txid.db");
        const viaCli = await cliRestore(replica, byTxid, ["--txid", String(1 + commits)]);
        assert.equal(viaCli.txid, 1 + commits);
        assert.equal(viaCli.generation, gens[0].generation);
        assertSameFile(byTxid, db, "database restored with --txid");

        // Earlier txids: exactly the contents the writer saw right after commit k.
        const earlier = path.join(dir, "earlier.db");
        for (const [k, dump] of probes) {
          const e = await restoreTo(replica, earlier, { txid: 1 + k });
          assert.equal(e.txid, 1 + k);
          assert.equal(await integrityCheck(earlier), "ok");
          assert.equal((await workloadState(earlier)).k, k);
          assert.ok(await dumpFile(earlier) === dump, `txid ${1 + k} should hold what commit ${k} left ${why}`);
        }
      } finally {
        await replicator.stop().catch(() => {});
        con.close();
      }
    }));

  test(`${backend}: the app's own PASSIVE and TRUNCATE checkpoints and a VACUUM restore byte for byte`, () =>
    withTempDir("app-checkpoints", async (dir) => {
      const seed = testSeed();
      const rand = prng(seed);
      const why = `(seed ${seed})`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const writer = await PythonWriter.start(db, {
        seed,
        passiveEvery: 7,
        truncateEvery: 23,
        vacuumAt: [110],
        maxTransactions: 220,
        sleepMs: [0, 4],
        schemaChanges: true,
      });
      const log = recordingLog();
      const replicator = new Replicator(db, { storage: replica.storage, cacheDir: path.join(dir, "cache"), syncInterval: 100, log });
      const events: ReplicatorEvent[] = [];
      replicator.on((e) => events.push(e));
      try {
        await replicator.start();
        const done = await writer.done();
        assert.equal(done.checkpoint?.[0], 0, "the final TRUNCATE checkpoint was not blocked");
        assert.ok(done.checkpoints.truncate.length >= 9 && done.checkpoints.truncate.every((c) => c[0] === 0));
        assert.ok(done.checkpoints.passive.length >= 30);
        assert.equal(done.checkpoints.vacuums, 1);
        await replicator.flush();
        await replicator.stop();

        const latest = path.join(dir, "latest.db");
        const r = await restoreTo(replica, latest);
        assertSameFile(latest, db);
        assert.equal(await integrityCheck(latest), "ok");
        assert.equal((await workloadState(latest)).k, done.commits);
        assert.equal(r.txid, replicator.status().txid);

        // Every repair and every generation after the first has its reason logged at warn level.
        const s = replicator.status();
        const repairs = events.filter((e) => e.type === "repair");
        assert.equal(s.repairs, repairs.length);
        const warnings = log.lines.filter((l) => l.level === "warn").map((l) => l.message);
        for (const e of repairs) {
          assert.ok(warnings.some((w) => w.includes(e.reason)), `repair "${e.reason}" was not logged at warn level`);
        }
        const snapshots = events.filter((e) => e.type === "snapshot");
        const gens = await assertContiguous(replica);
        assert.deepEqual(gens.map((g) => g.generation), snapshots.map((e) => e.generation), why);
        assert.equal(gens.length, 1 + repairs.length, "one new generation per repair, none without one");
        for (const e of snapshots) {
          assert.ok(e.reason.length > 0);
          assert.ok(
            log.lines.some((l) => l.message === "snapshot taken" && l.fields.generation === e.generation && l.fields.reason === e.reason),
            `snapshot of ${e.generation} has no logged reason`,
          );
        }
        await checkTxids(replica, gens, rand, dir, { perGeneration: 2 });
      } finally {
        await replicator.stop().catch(() => {});
        await writer.close().catch(() => writer.dispose());
      }
    }));
}

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
