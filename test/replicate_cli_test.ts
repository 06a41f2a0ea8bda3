/**
 * `walship replicate` as a subprocess, on both backends: what it does at
 * the edges of a database's life.
 *
 * - started before the database exists, it waits, then replicates it;
 * - a rollback-journal database is refused with exit 1 and one line that
 *   says how to switch it (`PRAGMA journal_mode=WAL`), touching nothing;
 * - SIGTERM ships every commit still waiting for its sync interval, then
 *   exits 0; SIGTERM while still waiting for the database exits 0 too;
 * - the application closing its last connection: pinned (the default),
 *   SQLite can neither checkpoint nor delete the WAL, and nothing needs
 *   repair; with --no-pin it deletes the WAL, and walship heals with a
 *   logged reason. Either way the restore equals the source.
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
import { sleep, waitFor, withTempDir } from "./_util.ts";

/** A TRUNCATE checkpoint of argv[1] from a fresh Python connection; prints (busy, log, checkpointed). */
const CHECKPOINT_PY = `
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
print(json.dumps(list(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())))
con.close()
`;

/**
 * A gated writer of 80 quick commits that closes its connection right after
 * the last one, without a checkpoint of its own: the last connection's close
 * then checkpoints and deletes the WAL unless something holds the database.
 */
function closingWriter(db: string): Promise<PythonWriter> {
  return PythonWriter.start(db, {
    seed: testSeed(),
    maxTransactions: 80,
    sleepMs: [0, 1],
    finalCheckpoint: false,
    closeAtEnd: true,
    gate: true,
  });
}

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

  test(`${backend}: pinned, the app closing its last connection cannot delete the WAL, and nothing needs repair`, () =>
    withTempDir("app-close-pinned", async (dir) => {
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      // The last commits and the close follow one another within microseconds.
      const writer = await closingWriter(db);
      const p = startReplicate(db, replica);
      try {
        await p.waitForLog(/^replicating$/);
        assert.ok(p.log.some((l) => /^pinned/.test(l.message)), `walship says it is pinned:\n${p.stderr}`);
        writer.go();
        const done = await writer.done();
        // walship holds the database's SHARED lock: the closing connection cannot
        // take EXCLUSIVE, so it neither checkpoints nor deletes the WAL.
        assert.equal(fs.existsSync(`${db}-wal`), true, "the WAL outlives the app's last connection");
        assert.ok(fs.statSync(`${db}-wal`).size > 0, "and still holds its frames");
        // One generation whose snapshot is txid 1, then exactly one txid per commit.
        await waitFor(
          () => `txid ${1 + done.commits} in the replica; stderr:\n${p.stderr}`,
          async () => (await assertContiguous(replica).catch(() => []))?.at(-1)?.lastTxid === 1 + done.commits,
        );
        assert.equal(await p.terminate(), 0, p.stderr);
        const gens = await assertContiguous(replica);
        assert.equal(gens.length, 1, "no new generation");
        assert.deepEqual(p.log.filter((l) => l.level === "warn" || l.level === "error"), [], "no warning");
        assert.deepEqual(p.log.filter((l) => /heal|repair|continuity lost/i.test(l.message)), [], "no heal, no repair");
        // Now nothing holds the database: checkpoint its WAL into the file and compare.
        const ck = spawnSync("python3", ["-c", CHECKPOINT_PY, db], { encoding: "utf8" });
        assert.equal(ck.status, 0, ck.stderr);
        assert.deepEqual(JSON.parse(ck.stdout), [0, 0, 0], "the source's TRUNCATE checkpoint went through");
        const latest = path.join(dir, "latest.db");
        const r = await restoreTo(replica, latest);
        assert.equal(r.txid, 1 + done.commits);
        assert.equal((await workloadState(latest)).k, done.commits, "the last commits before the close were shipped");
        assertSameFile(latest, db);
      } finally {
        p.signal("SIGKILL");
        await writer.close().catch(() => writer.dispose());
      }
    }));

  test(`${backend}: with --no-pin, the app closing its last connection deletes the WAL; walship heals with a logged reason`, () =>
    withTempDir("app-close-unpinned", async (dir) => {
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      // The last commits, the close's checkpoint and the WAL's deletion follow
      // one another within microseconds: walship cannot have read them before.
      const writer = await closingWriter(db);
      const p = startReplicate(db, replica, { extra: ["--no-pin"] });
      try {
        await p.waitForLog(/^replicating$/);
        writer.go();
        const done = await writer.done();
        assert.equal(fs.existsSync(`${db}-wal`), false, "unpinned, SQLite deleted the WAL");
        // The deleted WAL leaves continuity unproven: walship must say so and heal
        // (or start a new generation) before it can stop cleanly.
        const lost = await p.waitForLog(/continuity lost/);
        assert.equal(lost.level, "warn");
        assert.match(lost.message, /continuity lost: .*(WAL was deleted|went by unread|rebuilt)/, "the reason is named");
        assert.match(lost.message, /healed by shipping|new generation/);
        await sleep(300);
        assert.equal(await p.terminate(), 0, p.stderr);
        const latest = path.join(dir, "latest.db");
        const r = await restoreTo(replica, latest);
        assert.equal((await workloadState(latest)).k, done.commits, "the last commits before the close were shipped");
        assertSameFile(latest, db);
        const gens = await assertContiguous(replica);
        assert.equal(r.txid, gens.at(-1)!.lastTxid);
        const newGenerations = p.log.filter((l) => l.level === "warn" && /new generation/.test(l.message));
        assert.equal(newGenerations.length, gens.length - 1, "a new generation only with a logged reason");
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
