/**
 * Stopping while the replica is down, and restoring past a generation that
 * has no snapshot yet.
 *
 * - SIGTERM during an outage waits at most --shutdown-timeout for uploads,
 *   then exits 1 with one warning saying what waits in the local cache; the
 *   next start uploads it, and the restore is exact.
 * - A restore that passes over a newer generation without a snapshot says
 *   so on stderr (it does not fall back silently) and restores the older one.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { defaultCacheDir, Replicator } from "../src/replicate/replicator.ts";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import { startS3Server } from "./_s3_server.ts";
import { test } from "./_runtime.ts";
import {
  assertSameFile,
  freshReplica,
  openRuntimeWriter,
  restoreTo,
  runtimeTransaction,
  runWalship,
  startReplicate,
  testSeed,
  workloadState,
} from "./_replication_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

test("SIGTERM during an outage exits 1 after --shutdown-timeout; the next start uploads what waited", () =>
  withTempDir("shutdown-outage", async (dir) => {
    const s3 = await startS3Server();
    try {
      const replica = await freshReplica("s3", dir, s3);
      const db = path.join(dir, "app.db");
      const con = await openRuntimeWriter(db);
      const rand = prng(testSeed());
      await s3.stop(); // the outage starts before walship does
      const first = startReplicate(db, replica, { extra: ["--shutdown-timeout", "1s"] });
      await first.waitForLog(/^replicating$/);
      for (let k = 1; k <= 20; k++) runtimeTransaction(con, rand, k, []);
      await first.waitForLog(/upload failed, will retry/);
      const t0 = Date.now();
      first.signal("SIGTERM");
      const { code } = await first.exited;
      const took = Date.now() - t0;
      assert.equal(code, 1, first.stderr);
      assert.ok(took < 8_000, `exited ${took} ms after SIGTERM with a 1 s shutdown timeout`);
      const left = first.log.find((l) => /not yet uploaded/.test(l.message));
      assert.ok(left, `a warning about what was not uploaded; stderr:\n${first.stderr}`);
      assert.equal(left.level, "warn");
      const waiting = fs.readdirSync(path.join(defaultCacheDir(db), "objects"));
      assert.ok(waiting.length >= 2, `snapshot and segments wait in the cache: ${waiting}`);
      assert.deepEqual(await replica.storage.list("").catch(() => "unreachable"), "unreachable");

      await s3.start();
      const second = startReplicate(db, replica);
      await second.waitForLog(/^replicating$/);
      for (let k = 21; k <= 30; k++) runtimeTransaction(con, rand, k, []);
      assert.equal(await second.terminate(), 0, second.stderr);
      // walship's read mark held backfill back; with walship gone the file alone holds the state.
      assert.deepEqual(Object.values(con.all("PRAGMA wal_checkpoint(TRUNCATE)")[0]), [0, 0, 0]);
      assert.equal(fs.readdirSync(path.join(defaultCacheDir(db), "objects")).length, 0, "the cache drained");
      const out = path.join(dir, "restored.db");
      await restoreTo(replica, out);
      assertSameFile(out, db);
      assert.equal((await workloadState(out)).k, 30);
      con.close();
    } finally {
      await s3.close();
    }
  }));

test("restore passes over a newer generation with no snapshot, and says so on stderr", () =>
  withTempDir("skipped-generation", async (dir) => {
    const replica = await freshReplica("file", dir);
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db);
    const rand = prng(testSeed());
    // Two generations: a second replicator with its own cache cannot resume the first's.
    for (const [cache, from, to] of [["cache-a", 1, 5], ["cache-b", 6, 9]] as const) {
      const r = new Replicator(db, { storage: replica.storage, cacheDir: path.join(dir, cache), syncInterval: 10 });
      await r.start();
      for (let k = from; k <= to; k++) runtimeTransaction(con, rand, k, []);
      await r.flush();
      await r.stop();
    }
    con.close();
    const [older, newer] = await listGenerations(replica.storage);
    const olderListing = await listGeneration(replica.storage, older);
    const olderLast = Math.max(...olderListing.segments.map((s) => s.lastTxid));
    const newerSnapshots = (await listGeneration(replica.storage, newer)).snapshots;
    assert.equal(newerSnapshots.length, 1);
    await replica.storage.delete(newerSnapshots.map((s) => s.key));

    const out = path.join(dir, "out.db");
    const r = await runWalship(["restore", "-o", out, "--json", replica.url]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).generation, older);
    assert.equal(JSON.parse(r.stdout).txid, olderLast);
    assert.match(r.stderr, new RegExp(`passing over newer generation\\(s\\) ${newer}: no snapshot`));
    assert.equal((await workloadState(out)).k, 5);
  }));
