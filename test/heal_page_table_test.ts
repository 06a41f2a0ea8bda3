/**
 * The page table (`pages` in the cache directory: a hash of every page of
 * the replicated state) that a heal diffs against (docs/FORMAT.md, "Local
 * cache"):
 *
 * - after a clean stop it is saved at the journal's txid and hashes exactly
 *   the pages of the replica's latest state;
 * - after a SIGKILL the saved table is stale (saved at most every 10 s); the
 *   next start replays the segments shipped since, and the heal it then
 *   needs ships exactly the pages that differ;
 * - deleted, it is rebuilt by restoring the replica ("rebuilt the page
 *   table"), and the heal still goes on in the same generation;
 * - deleted with the replica unreachable, it cannot be rebuilt: walship
 *   says why and starts a new generation, which reaches the replica once it
 *   is back; the restore is still exact (S3: a directory is never down).
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { PageTable } from "../src/cache/page_table.ts";
import { Replicator } from "../src/replicate/replicator.ts";
import { test } from "./_runtime.ts";
import { startS3Server } from "./_s3_server.ts";
import {
  assertContiguous,
  assertSameFile,
  BACKENDS,
  closeSharedS3,
  freshReplica,
  integrityCheck,
  recordingLog,
  restoreTo,
  startReplicate,
  testSeed,
  type WalshipProcess,
  workloadState,
} from "./_replication_fixtures.ts";
import {
  differingPages,
  isHealLine,
  journalTxid,
  makeBulkDatabase,
  PAGE,
  waitForReplicaCommit,
  writeBatch,
} from "./_heal_fixtures.ts";
import { withTempDir } from "./_util.ts";

/** Asserts that `table` hashes exactly the pages of the database image `file`. */
function assertTableDescribes(table: PageTable, file: string): void {
  const bytes = fs.readFileSync(file);
  assert.equal(table.count, bytes.length / PAGE, "the table has as many pages as the replicated state");
  for (let p = 1; p <= table.count; p++) {
    assert.ok(table.matches(p, bytes.subarray((p - 1) * PAGE, p * PAGE)), `page ${p} of the table`);
  }
}

for (const backend of BACKENDS) {
  test(`${backend}: after a clean stop, pages holds the journal's txid and the replicated state's hashes`, () =>
    withTempDir("pages-stop", async (dir) => {
      const seed = testSeed();
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const cacheDir = path.join(dir, "cache");
      makeBulkDatabase(db, 2);
      const log = recordingLog();
      const replicator = new Replicator(db, { storage: replica.storage, cacheDir, syncInterval: 50, log });
      await replicator.start();
      const done = await writeBatch(db, { seed, side: path.join(dir, "side.txt"), transactions: 150, truncateEvery: 60 });
      await replicator.flush();
      await replicator.stop();
      const status = replicator.status();

      const table = PageTable.load(path.join(cacheDir, "pages"));
      assert.ok(table, "pages exists after a clean stop");
      assert.equal(table.txid, journalTxid(cacheDir), "at the journal's txid");
      assert.equal(table.txid, status.txid);
      assert.equal(table.generation, status.generation);
      assert.equal(table.pageSize, PAGE);
      const latest = path.join(dir, "latest.db");
      const r = await restoreTo(replica, latest);
      assert.equal(r.txid, table.txid);
      assert.equal((await workloadState(latest)).k, done.commits);
      assertTableDescribes(table, latest);
    }));

  test(`${backend}: a stale table is replayed after a SIGKILL, a deleted one rebuilt from the replica; both heals exact`, () =>
    withTempDir("pages-kill", async (dir) => {
      const seed = testSeed();
      const why = `(seed ${seed})`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const side = path.join(dir, "side.txt");
      const cacheDir = path.join(dir, "cache");
      const pages = path.join(cacheDir, "pages");
      makeBulkDatabase(db, 4);
      const runs: WalshipProcess[] = [];
      const start = async () => {
        runs.push(startReplicate(db, replica, { cacheDir }));
        await runs.at(-1)!.waitForLog(/^replicating$/);
        return runs.at(-1)!;
      };
      try {
        // 1. Killed within 10 s of its start: the saved table is the snapshot's, behind the journal.
        const run1 = await start();
        let last = await writeBatch(db, { seed, side, transactions: 150 });
        // The database has no -shm yet when walship starts, so the writer can
        // restart the WAL before walship pins it; walship then heals and saves
        // the table. Slow commits shipped after that leave the table behind.
        // Checked once the replica holds the batch: a heal can come late.
        let killedAt = await waitForReplicaCommit(replica, dir, last.commits, { cacheDir });
        for (let i = 1; (PageTable.load(pages)?.txid ?? 0) >= killedAt; i++) {
          assert.ok(i <= 5, `the table kept up with the journal (txid ${killedAt}) after ${i - 1} slow batches: ${run1.stderr}`);
          last = await writeBatch(db, { seed: seed + 10 * i, side, transactions: 10, sleepMs: [2, 4] });
          killedAt = await waitForReplicaCommit(replica, dir, last.commits, { cacheDir });
        }
        await run1.kill();
        const stale = PageTable.load(pages);
        assert.ok(stale, "a table was saved at the snapshot");
        assert.equal(journalTxid(cacheDir), killedAt);
        assert.ok(stale.txid < killedAt, `the saved table (txid ${stale.txid}) is behind the journal (${killedAt})`);
        const atKill = path.join(dir, "at-kill.db");
        await restoreTo(replica, atKill, { txid: killedAt });

        await writeBatch(db, { seed: seed + 1, side, transactions: 200, truncateEvery: 50 });
        const atHeal1 = path.join(dir, "at-heal1.db");
        fs.copyFileSync(db, atHeal1);
        const changed1 = differingPages(atKill, atHeal1);
        const run2 = await start();
        const heals2 = run2.log.filter(isHealLine);
        assert.equal(heals2.length, 1, run2.stderr);
        assert.equal(heals2[0].fields.pages, changed1.length, `replayed table: the heal ships exactly the changed pages ${why}`);
        assert.equal(heals2[0].fields.txid, killedAt + 1);
        assert.ok(!run2.log.some((l) => /rebuilt the page table/.test(l.message)), "replayed, not rebuilt");

        // 2. A clean stop saves the table; deleted, the next start rebuilds it from the replica.
        await writeBatch(db, { seed: seed + 2, side, transactions: 40 });
        assert.equal(await run2.terminate(), 0, run2.stderr);
        const stoppedAt = journalTxid(cacheDir);
        assert.equal(PageTable.load(pages)?.txid, stoppedAt, "a clean stop saves the table at the journal's txid");
        const atStop = path.join(dir, "at-stop.db");
        await restoreTo(replica, atStop, { txid: stoppedAt });
        fs.rmSync(pages);

        await writeBatch(db, { seed: seed + 3, side, transactions: 200, truncateEvery: 50 });
        const atHeal2 = path.join(dir, "at-heal2.db");
        fs.copyFileSync(db, atHeal2);
        const changed2 = differingPages(atStop, atHeal2);
        const run3 = await start();
        const rebuilt = run3.log.find((l) => /rebuilt the page table/.test(l.message));
        assert.ok(rebuilt, `no "rebuilt the page table" line; stderr:\n${run3.stderr}`);
        assert.equal(rebuilt.level, "info");
        assert.equal(rebuilt.fields.txid, stoppedAt);
        const heals3 = run3.log.filter(isHealLine);
        assert.equal(heals3.length, 1, run3.stderr);
        assert.equal(heals3[0].fields.pages, changed2.length, `rebuilt table: the heal ships exactly the changed pages ${why}`);
        assert.equal(heals3[0].fields.txid, stoppedAt + 1);
        assert.equal(await run3.terminate(), 0, run3.stderr);

        const gens = await assertContiguous(replica);
        assert.equal(gens.length, 1, "both heals went on in the one generation");
        assert.equal(heals2[0].fields.generation, gens[0].generation);
        assert.equal(heals3[0].fields.generation, gens[0].generation);
        const out = path.join(dir, "out.db");
        await restoreTo(replica, out, { txid: killedAt + 1 });
        assertSameFile(out, atHeal1, `the first heal's txid ${why}`);
        await restoreTo(replica, out, { txid: stoppedAt + 1 });
        assertSameFile(out, atHeal2, `the second heal's txid ${why}`);
        await restoreTo(replica, out);
        assertSameFile(out, db, `the latest restore ${why}`);
        assert.equal(await integrityCheck(out), "ok");
      } finally {
        for (const p of runs) p.signal("SIGKILL");
      }
    }), { timeout: 120_000 });
}

test("s3: with the table deleted and the replica down at restart, walship starts a new generation and says why", () =>
  withTempDir("pages-down", async (dir) => {
    const seed = testSeed();
    const server = await startS3Server();
    const db = path.join(dir, "app.db");
    const side = path.join(dir, "side.txt");
    const cacheDir = path.join(dir, "cache");
    const runs: WalshipProcess[] = [];
    try {
      const replica = await freshReplica("s3", dir, server);
      makeBulkDatabase(db, 2);
      runs.push(startReplicate(db, replica, { cacheDir }));
      await runs[0].waitForLog(/^replicating$/);
      const first = await writeBatch(db, { seed, side, transactions: 100 });
      await waitForReplicaCommit(replica, dir, first.commits, { cacheDir });
      assert.equal(await runs[0].terminate(), 0, runs[0].stderr);
      const stoppedAt = journalTxid(cacheDir);
      fs.rmSync(path.join(cacheDir, "pages"));

      const down = await writeBatch(db, { seed: seed + 1, side, transactions: 150, truncateEvery: 50 });
      await server.stop();
      runs.push(startReplicate(db, replica, { cacheDir }));
      const run = runs[1];
      await run.waitForLog(/^replicating$/, 60_000);
      const warns = run.log.filter((l) => l.level === "warn").map((l) => l.message);
      assert.ok(warns.some((m) => /replica unreachable at start/.test(m)), run.stderr);
      assert.ok(warns.some((m) => /^page table unavailable .*a heal would start a new generation/.test(m)), run.stderr);
      const newGen = run.log.find((l) => l.level === "warn" && /starting a new generation/.test(l.message));
      assert.ok(newGen, run.stderr);
      assert.match(newGen.message, /the WAL no longer holds the last replicated position/, "the reason is logged");
      assert.ok(run.log.some((l) => /cannot heal: no page table/.test(l.message)), run.stderr);
      assert.equal(run.log.filter(isHealLine).length, 0);

      await server.start();
      const latestTxid = await waitForReplicaCommit(replica, dir, down.commits, { timeoutMs: 60_000 });
      assert.equal(await run.terminate(), 0, run.stderr);
      const gens = await assertContiguous(replica);
      assert.equal(gens.length, 2, "a new generation once the replica was back");
      assert.equal(gens[0].lastTxid, stoppedAt);
      assert.equal(gens[1].firstTxid, stoppedAt + 1, "txids go on across the generations");
      assert.equal(latestTxid, stoppedAt + 1);
      const snap = run.log.find((l) => l.message === "snapshot taken" && l.fields.generation === gens[1].generation);
      assert.match(String(snap?.fields.reason), /no longer holds the last replicated position/);
      const out = path.join(dir, "out.db");
      await restoreTo(replica, out);
      assertSameFile(out, db, `the latest restore (seed ${seed})`);
      assert.equal(await integrityCheck(out), "ok");
    } finally {
      for (const p of runs) p.signal("SIGKILL");
      await server.close();
    }
  }), { timeout: 120_000 });

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
