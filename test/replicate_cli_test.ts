/**
 * `walship replicate` as a subprocess, on both backends: what it does at
 * the edges of a database's life.
 *
 * - started before the database exists, it waits, then replicates it;
 * - a rollback-journal database is refused with exit 1 and one line that
 *   says how to switch it (`PRAGMA journal_mode=WAL`), touching nothing;
 * - SIGTERM ships every commit still waiting for its sync interval, then
 *   exits 0; SIGTERM while still waiting for the database exits 0 too;
 * - the application closing its last connection (SQLite then checkpoints
 *   and deletes the WAL) while walship runs loses nothing.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { defaultCacheDir } from "../src/replicate/replicator.ts";
import { listGenerations } from "../src/restore/plan.ts";
import { test } from "./_runtime.ts";
import {
  assertContiguous,
  assertSameFile,
  BACKENDS,
  closeSharedS3,
  freshReplica,
  integrityCheck,
  PythonWriter,
  restoreTo,
  startReplicate,
  testSeed,
  workloadState,
} from "./_replication_fixtures.ts";
import { sleep, withTempDir } from "./_util.ts";

for (const backend of BACKENDS) {
  test(`${backend}: replicate waits for a database that does not exist yet, then replicates it`, () =>
    withTempDir("late-db", async (dir) => {
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const p = startReplicate(db, replica);
      let writer: PythonWriter | undefined;
      try {
        const waiting = await p.waitForLog(/waiting for the database/);
        assert.equal(waiting.level, "info");
        assert.equal(waiting.fields.db, db);
        await sleep(1000);
        assert.equal(p.child.exitCode, null, "still waiting after a second");
        assert.equal(fs.existsSync(db), false);
        writer = await PythonWriter.start(db, { seed: testSeed(), maxTransactions: 60, sleepMs: [1, 5] });
        await p.waitForLog(/^replicating$/);
        const done = await writer.done();
        assert.equal(await p.terminate(), 0, p.stderr);
        const latest = path.join(dir, "latest.db");
        const r = await restoreTo(replica, latest);
        assertSameFile(latest, db);
        assert.equal(await integrityCheck(latest), "ok");
        assert.equal((await workloadState(latest)).k, done.commits);
        assert.equal(r.txid, (await assertContiguous(replica)).at(-1)!.lastTxid);
      } finally {
        p.signal("SIGKILL");
        await writer?.close().catch(() => writer?.dispose());
      }
    }));

  test(`${backend}: a rollback-journal database is refused with exit 1 and one line naming PRAGMA journal_mode=WAL`, () =>
    withTempDir("rollback", async (dir) => {
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const made = spawnSync("sqlite3", [db, "CREATE TABLE t(a); INSERT INTO t VALUES (randomblob(5000));"], { encoding: "utf8" });
      assert.equal(made.status, 0, made.stderr);
      const before = fs.readFileSync(db);
      const p = startReplicate(db, replica);
      const { code } = await p.exited;
      assert.equal(code, 1);
      const lines = p.stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, `one line, got:\n${p.stderr}`);
      assert.match(lines[0], /^walship: .*rollback journal.*PRAGMA journal_mode=WAL/);
      assert.ok(lines[0].includes(db), "the line names the database");
      assert.equal(p.stdout, "");
      assert.ok(fs.readFileSync(db).equals(before), "the database is untouched");
      assert.equal(fs.existsSync(`${db}-wal`), false);
      assert.equal(fs.existsSync(defaultCacheDir(db)), false, "no cache directory is created");
      assert.deepEqual(await listGenerations(replica.storage), [], "nothing is written to the replica");
    }));

  test(`${backend}: SIGTERM ships every commit still waiting for the sync interval, then exits 0`, () =>
    withTempDir("sigterm", async (dir) => {
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      // No checkpoints at all: nothing but SIGTERM can get the last commits shipped.
      const writer = await PythonWriter.start(db, {
        seed: testSeed(),
        maxTransactions: 150,
        sleepMs: [0, 2],
        autocheckpoint: 0,
        finalCheckpoint: false,
        gate: true,
      });
      const p = startReplicate(db, replica, { syncInterval: "1h" });
      try {
        await p.waitForLog(/^replicating$/);
        writer.go();
        const done = await writer.done();
        await sleep(1200); // walship reads the WAL at least once a second, but ships only hourly
        const shippedBefore = (await assertContiguous(replica)).at(-1)!.lastTxid;
        assert.equal(await p.terminate(), 0, p.stderr);
        const stopped = p.log.find((l) => l.message === "stopped");
        assert.ok(stopped, p.stderr);
        assert.equal(stopped.fields.uploadedTxid, stopped.fields.txid);
        await writer.close(); // the last connection: SQLite checkpoints into the db file and deletes the WAL
        const latest = path.join(dir, "latest.db");
        const r = await restoreTo(replica, latest);
        assert.equal(r.txid, stopped.fields.txid);
        assert.ok(r.txid >= shippedBefore + 100, `SIGTERM shipped txids ${shippedBefore + 1}..${r.txid}`);
        assertSameFile(latest, db);
        assert.equal((await workloadState(latest)).k, done.commits);
      } finally {
        p.signal("SIGKILL");
        await writer.close().catch(() => writer.dispose());
      }
    }));

  test(`${backend}: the app closing its last connection (WAL checkpointed and deleted) loses nothing`, () =>
    withTempDir("app-close", async (dir) => {
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      // The last commits, the close's checkpoint and the WAL's deletion follow
      // one another within microseconds: walship cannot have read them before.
      const writer = await PythonWriter.start(db, {
        seed: testSeed(),
        maxTransactions: 80,
        sleepMs: [0, 1],
        finalCheckpoint: false,
        closeAtEnd: true,
        gate: true,
      });
      const p = startReplicate(db, replica);
      try {
        await p.waitForLog(/^replicating$/);
        writer.go();
        const done = await writer.done();
        assert.equal(fs.existsSync(`${db}-wal`), false, "SQLite deleted the WAL");
        await sleep(500);
        assert.equal(await p.terminate(), 0, p.stderr);
        const latest = path.join(dir, "latest.db");
        await restoreTo(replica, latest);
        assert.equal((await workloadState(latest)).k, done.commits, "the last commits before the close were shipped");
        assertSameFile(latest, db);
        const gens = await assertContiguous(replica);
        const warnings = p.log.filter((l) => l.level === "warn" && /new generation/.test(l.message));
        assert.equal(warnings.length, gens.length - 1, "a new generation only with a logged reason");
      } finally {
        p.signal("SIGKILL");
        await writer.close().catch(() => writer.dispose());
      }
    }));
}

test("SIGTERM while waiting for the database to appear exits 0 at once", () =>
  withTempDir("sigterm-waiting", async (dir) => {
    const replica = await freshReplica("file", dir);
    const db = path.join(dir, "never.db");
    const p = startReplicate(db, replica);
    try {
      await p.waitForLog(/waiting for the database/);
      const started = Date.now();
      assert.equal(await p.terminate(5_000), 0, p.stderr);
      assert.ok(Date.now() - started < 5_000);
      assert.doesNotMatch(p.stderr, /unexpected error/);
      assert.equal(fs.existsSync(db), false);
    } finally {
      p.signal("SIGKILL");
    }
  }));

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
