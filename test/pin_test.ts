/**
 * The pin, one behaviour at a time (DESIGN.md, "The pin"):
 *
 * - while walship runs pinned, the last app connection closing (the sqlite3
 *   command line, writing and exiting) does not delete the WAL; the locks
 *   seen from outside are a shared read slot in 1..4, DMS and the database's
 *   SHARED range, never READ_LOCK(0) while the slot is held, so a write
 *   lock on byte 123 would not be blocked; the slot has a real read mark, so
 *   another connection's PASSIVE checkpoint backfills up to it and no
 *   further, and the restore equals what the database and its WAL hold;
 * - a database held in `locking_mode=EXCLUSIVE` is refused: exit 1, one line;
 * - `--no-pin` says "unpinned" once, a pinned run says "pinned" once, and
 *   `status().pin` tells which;
 * - an app that runs walship on its own thread checkpoints with
 *   `withPinReleased`: wrapped, its TRUNCATE goes through; unwrapped, it is
 *   busy (the pin really holds).
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { readWalIndexFile } from "../src/capture/file_source.ts";
import { defaultCacheDir, Replicator } from "../src/replicate/replicator.ts";
import { listGenerations } from "../src/restore/plan.ts";
import { test } from "./_runtime.ts";
import { ConnectionHolder, F_RDLCK, F_UNLCK, lockView, sqlite3Cli } from "./_pin_fixtures.ts";
import {
  assertContiguous,
  assertSameFile,
  checkpoint,
  dumpDatabase,
  dumpFile,
  dumpLive,
  freshReplica,
  openRuntimeWriter,
  recordingLog,
  type Replica,
  restoreTo,
  runtimeTransaction,
  startReplicate,
  testSeed,
  type WalshipProcess,
} from "./_replication_fixtures.ts";
import { prng, sleep, waitFor, withTempDir } from "./_util.ts";

/** Waits until the replica's newest txid is `txid`. */
async function waitForTxid(replica: Replica, txid: number, p?: WalshipProcess): Promise<void> {
  let seen: unknown = null;
  await waitFor(
    () => `txid ${txid} in the replica (it holds ${JSON.stringify(seen)})${p ? `; stderr:\n${p.stderr}` : ""}`,
    async () => {
      seen = await assertContiguous(replica).catch((err) => String(err));
      return Array.isArray(seen) && seen.at(-1)?.lastTxid === txid;
    },
    20_000,
    50,
  );
}

test("pinned: the last connection closing keeps the WAL, walship's slot carries a read mark, and a PASSIVE checkpoint backfills up to it and no further", () =>
  withTempDir("pin-locks", async (dir) => {
    const replica = await freshReplica("file", dir);
    const db = path.join(dir, "app.db");
    sqlite3Cli(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (randomblob(3000));");
    assert.equal(fs.existsSync(`${db}-wal`), false, "without walship, the command line's exit deletes the WAL");

    // An app connection is open when walship starts, so the -shm is there to pin.
    const app = await ConnectionHolder.open(db, ["SELECT count(*) FROM t"]);
    const p = startReplicate(db, replica);
    try {
      await p.waitForLog(/^replicating$/);
      assert.equal(p.log.filter((l) => /^pinned/.test(l.message)).length, 1, p.stderr);
      await app.close();
      assert.equal(fs.existsSync(`${db}-wal`), true, "the app's last connection closed, and the WAL is still there");

      // The sqlite3 command line, the only app connection now, writes twice and exits.
      sqlite3Cli(db, "INSERT INTO t(v) VALUES (randomblob(5000)); INSERT INTO t(v) SELECT randomblob(200) FROM t;");
      assert.equal(fs.existsSync(`${db}-wal`), true, "the WAL outlives the command line's exit");
      assert.ok(fs.statSync(`${db}-wal`).size > 32, "and still holds its frames");
      await waitForTxid(replica, 3, p); // the snapshot, then one txid per commit

      // No app connection is open: every lock held now is walship's.
      for (let i = 0; i < 25; i++) {
        const v = await lockView(db);
        assert.equal(v.readLocks[0], F_UNLCK, "a write lock on byte 123 (READ_LOCK(0)) would not be blocked");
        const held = v.readLocks.slice(1).filter((t) => t !== F_UNLCK);
        assert.deepEqual(held, [F_RDLCK], `exactly one of READ_LOCK(1..4) is held, shared: ${v.readLocks}`);
        assert.equal(v.dms, F_RDLCK, "DMS is held shared");
        assert.equal(v.dbShared, F_RDLCK, "the database's SHARED range is held shared");
        assert.equal(v.write, F_UNLCK);
        assert.equal(v.ckpt, F_UNLCK);
        await sleep(20);
      }

      // walship's slot has a real read mark, as a reader's has: it was set to the last frame when
      // walship took the slot (before the command line wrote), so backfill stops there.
      const slot = (await lockView(db)).readLocks.findIndex((t, i) => i > 0 && t === F_RDLCK);
      const mark = readWalIndexFile(`${db}-shm`)!.readMarks[slot];
      const [busy, log, checkpointed] = sqlite3Cli(db, "PRAGMA wal_checkpoint(PASSIVE);").trim().split("|").map(Number);
      assert.equal(busy, 0);
      assert.ok(log > mark, `the WAL holds frames past walship's mark: ${log} > ${mark}`);
      assert.equal(checkpointed, mark, "frames were backfilled up to walship's read mark, and no further");
      assert.equal(fs.existsSync(`${db}-wal`), true, "that connection's exit did not delete the WAL either");
      const latest = path.join(dir, "latest.db");
      const r = await restoreTo(replica, latest);
      assert.equal(r.txid, 3);
      assert.equal(await dumpFile(latest), await dumpLive(db), "the restore holds what the database and its WAL hold");

      assert.equal(await p.terminate(), 0, p.stderr);
      assert.deepEqual(p.log.filter((l) => l.level === "warn" || l.level === "error"), []);
      // walship gone, the next connection to close deletes the WAL: it was the pin that kept it.
      sqlite3Cli(db, "SELECT count(*) FROM t;");
      assert.equal(fs.existsSync(`${db}-wal`), false);
    } finally {
      p.signal("SIGKILL");
      app.dispose();
    }
  }));

test("a database held in locking_mode=EXCLUSIVE is refused with exit 1 and one line that says so", () =>
  withTempDir("pin-exclusive", async (dir) => {
    // Exclusive before the first WAL access (no -shm at all), and after it (a -shm exists).
    const cases = [
      ["before", ["PRAGMA locking_mode=EXCLUSIVE", "INSERT INTO t VALUES (randomblob(100))"]],
      ["after", ["INSERT INTO t VALUES (1)", "PRAGMA locking_mode=EXCLUSIVE", "INSERT INTO t VALUES (randomblob(100))"]],
    ] as const;
    await Promise.all(cases.map(async ([name, sql]) => {
      const db = path.join(dir, `${name}.db`);
      const replica = await freshReplica("file", path.join(dir, name));
      sqlite3Cli(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(a);");
      const app = await ConnectionHolder.open(db, [...sql]);
      try {
        if (name === "before") assert.equal(fs.existsSync(`${db}-shm`), false, "no wal-index in shared memory");
        const p = startReplicate(db, replica);
        const { code } = await p.exited;
        assert.equal(code, 1, `${name}: ${p.stderr}`);
        const lines = p.stderr.trimEnd().split("\n");
        assert.equal(lines.length, 1, `${name}: one line, got:\n${p.stderr}`);
        assert.match(lines[0], /^walship: .*held exclusively.*locking_mode=EXCLUSIVE/);
        assert.ok(lines[0].includes(db), "the line names the database");
        assert.equal(p.stdout, "");
        assert.equal(fs.existsSync(defaultCacheDir(db)), false, "no cache directory is created");
        assert.deepEqual(await listGenerations(replica.storage), [], "nothing is written to the replica");
      } finally {
        await app.close();
      }
    }));
  }));

test("--no-pin says it runs unpinned once, a pinned run says pinned once, and status().pin tells which", () =>
  withTempDir("pin-say", async (dir) => {
    const runs = await Promise.all([[], ["--no-pin"]].map(async (extra, i) => {
      const db = path.join(dir, `app${i}.db`);
      sqlite3Cli(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(a);");
      const app = await ConnectionHolder.open(db, ["INSERT INTO t VALUES (1)"]);
      const p = startReplicate(db, await freshReplica("file", path.join(dir, `r${i}`)), { extra });
      try {
        await p.waitForLog(/^replicating$/);
        for (let k = 0; k < 5; k++) sqlite3Cli(db, `INSERT INTO t VALUES (${k});`);
        await sleep(300);
        assert.equal(await p.terminate(), 0, p.stderr);
        return p;
      } finally {
        p.signal("SIGKILL");
        await app.close();
      }
    }));
    const [pinned, unpinned] = runs.map((p) => p.log);
    const said = pinned.filter((l) => /^pinned/.test(l.message));
    assert.equal(said.length, 1, "pinned once");
    assert.equal(said[0].level, "info");
    assert.ok([1, 2, 3, 4].includes(said[0].fields.slot as number), `it names its read slot: ${said[0].fields.slot}`);
    assert.equal(pinned.filter((l) => /unpinned/.test(l.message)).length, 0);
    const warned = unpinned.filter((l) => /unpinned/.test(l.message));
    assert.equal(warned.length, 1, "unpinned once");
    assert.equal(warned[0].level, "warn");
    assert.match(warned[0].message, /--no-pin/);
    assert.ok(unpinned.indexOf(warned[0]) < unpinned.findIndex((l) => l.message === "replicating"), "said at startup");
    assert.equal(unpinned.filter((l) => /^pinned/.test(l.message)).length, 0);

    // In-process: status().pin.
    const db = path.join(dir, "inproc.db");
    const con = await openRuntimeWriter(db);
    try {
      for (const pin of [true, false]) {
        const log = recordingLog();
        const r = new Replicator(db, {
          storage: (await freshReplica("file", path.join(dir, `inproc-${pin}`))).storage,
          cacheDir: path.join(dir, `cache-${pin}`),
          pin,
          log,
        });
        await r.start();
        try {
          if (pin) assert.match(r.status().pin, /^held \(READ_LOCK [1-4]\)$/);
          else assert.equal(r.status().pin, "unpinned (--no-pin)");
          assert.equal(log.lines.filter((l) => (pin ? /^pinned/ : /unpinned/).test(l.message)).length, 1);
        } finally {
          await r.stop();
        }
        assert.doesNotMatch(r.status().pin, /^held/, "stopped, nothing is held");
      }
    } finally {
      con.close();
    }
  }));

test("in-process: a TRUNCATE checkpoint goes through inside withPinReleased, and is busy outside it", () =>
  withTempDir("pin-released", async (dir) => {
    const replica = await freshReplica("file", dir);
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db, ["PRAGMA busy_timeout=50"]);
    const rand = prng(testSeed());
    const log = recordingLog();
    const replicator = new Replicator(db, { storage: replica.storage, cacheDir: path.join(dir, "cache"), syncInterval: 50, log });
    try {
      await replicator.start();
      for (let k = 1; k <= 20; k++) runtimeTransaction(con, rand, k, []);
      await replicator.flush();
      assert.match(replicator.status().pin, /^held \(READ_LOCK [1-4]\)$/);

      // On this thread, walship cannot let its slot go while SQLite waits for it.
      const t0 = Date.now();
      const [busy, frames, backfilled] = checkpoint(con, "TRUNCATE");
      assert.equal(busy, 1, "the pin holds: the TRUNCATE checkpoint is busy");
      assert.ok(frames > 0 && backfilled < frames, `it backfilled only up to walship's read mark: ${backfilled} of ${frames}`);
      assert.ok(Date.now() - t0 >= 40, "after waiting its busy_timeout");
      assert.ok(fs.statSync(`${db}-wal`).size > 0, "the WAL was not truncated");

      assert.deepEqual(await replicator.withPinReleased(() => checkpoint(con, "TRUNCATE")), [0, 0, 0]);
      assert.equal(fs.statSync(`${db}-wal`).size, 0, "the WAL was truncated");
      assert.match(replicator.status().pin, /^held \(READ_LOCK [1-4]\)$/, "and the slot is held again");

      for (let k = 21; k <= 30; k++) runtimeTransaction(con, rand, k, []);
      await replicator.flush();
      const latest = path.join(dir, "latest.db");
      assert.equal((await restoreTo(replica, latest)).txid, 31);
      assert.ok(await dumpFile(latest) === dumpDatabase(con), "the restore holds what the app sees");
      assert.deepEqual(await replicator.withPinReleased(() => checkpoint(con, "TRUNCATE")), [0, 0, 0]);
      await replicator.flush();
      await restoreTo(replica, latest);
      assertSameFile(latest, db);

      const s = replicator.status();
      assert.equal(s.txid, 31, "one txid per commit");
      assert.equal(s.heals, 0);
      assert.equal(s.repairs, 0);
      assert.equal(s.snapshots, 1);
      assert.deepEqual(log.lines.filter((l) => l.level === "warn" || l.level === "error"), []);
    } finally {
      await replicator.stop().catch(() => {});
      con.close();
    }
  }));
