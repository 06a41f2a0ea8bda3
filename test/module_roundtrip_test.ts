/**
 * The public module (`src/mod.ts`) used the way an app embeds it, on
 * whichever runtime runs this file: the app writes with the runtime's own
 * SQLite (`bun:sqlite` or `node:sqlite`) in this very program while
 * `replicate()` ships it to `file://` replicas; then `stop()`, `restore()`.
 *
 * - The restore is the source byte for byte (after the app's own TRUNCATE
 *   checkpoint, handed over with `withPinReleased`), holds the same rows
 *   (count and a hash of every row), and says which generation, txid and
 *   time it is.
 * - Events: a "snapshot" for the first generation, "segment"s, and "sync"s
 *   as objects reach the replica, the last one at the final txid.
 * - `inspect(db)` is the object `walship inspect --json` prints.
 * - Two replicas at once (`replica: [urlA, urlB]`): each restores to the
 *   same bytes, generation and txid, and each gets its own "sync" events.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { inspect, type InspectReport, replicate, type ReplicatorEvent, restore } from "../src/mod.ts";
import { test } from "./_runtime.ts";
import {
  assertSameFile,
  checkpoint,
  dumpDatabase,
  dumpFile,
  integrityCheck,
  openRuntimeWriter,
  runtimeTransaction,
  runWalship,
  testSeed,
  workloadState,
} from "./_replication_fixtures.ts";
import type { SqliteConnection } from "./_runtime.ts";
import { prng, sleep, waitFor, withTempDir } from "./_util.ts";

const COMMITS = 150;

/** Commits 1..COMMITS of the workload, yielding to the replicator now and then. */
async function writeWorkload(con: SqliteConnection, seed: number): Promise<void> {
  const rand = prng(seed);
  const extra: string[] = [];
  for (let k = 1; k <= COMMITS; k++) {
    runtimeTransaction(con, rand, k, extra);
    if (k % 10 === 0) await sleep(rand() % 30);
  }
}

/** Row count of t and a SHA-256 over the schema and every row of every table. */
function fingerprint(dump: string, rows: number): { rows: number; sha256: string } {
  return { rows, sha256: createHash("sha256").update(dump).digest("hex") };
}

function sourceFingerprint(con: SqliteConnection) {
  const rows = Number(con.all<{ n: number }>("SELECT count(*) AS n FROM t")[0].n);
  return fingerprint(dumpDatabase(con), rows);
}

async function fileFingerprint(file: string) {
  return fingerprint(await dumpFile(file), (await workloadState(file)).rows);
}

/** Asserts the shape `walship inspect --json` has, field by field. */
function assertInspectShape(report: InspectReport): void {
  assert.deepEqual(Object.keys(report).sort(), ["database", "shm", "wal"]);
  assert.deepEqual(Object.keys(report.database).sort(), ["pageCount", "pageSize", "walMode"]);
  assert.equal(typeof report.database.pageSize, "number");
  assert.equal(report.database.walMode, true);
  if (report.wal) {
    for (
      const k of ["pageSize", "checkpointSeq", "salt1", "salt2", "validFrames", "lastCommitFrame", "commits"] as const
    ) assert.equal(typeof report.wal[k], "number", `wal.${k}`);
    assert.equal(typeof report.wal.bigEndianChecksum, "boolean");
  }
  if (report.shm) {
    for (const k of ["mxFrame", "nBackfill", "iChange"] as const) assert.equal(typeof report.shm[k], "number", `shm.${k}`);
    assert.ok(Array.isArray(report.shm.readMarks));
  }
}

test("module: the app writes with the runtime's SQLite while replicate() runs; restore() is the source byte for byte", () =>
  withTempDir("module-roundtrip", async (dir) => {
    const seed = testSeed();
    const why = `(seed ${seed}, WALSHIP_TEST_SEED reproduces it)`;
    const db = path.join(dir, "app.db");
    const url = pathToFileURL(path.join(dir, "replica")).href;
    // No automatic checkpoints: every commit is one txid, and the WAL holds them all until the TRUNCATE below.
    const con = await openRuntimeWriter(db, ["PRAGMA wal_autocheckpoint=0"]);
    const started = Date.now();
    const r = await replicate({ db, replica: url, syncInterval: "50ms", cacheDir: path.join(dir, "cache") });
    const events: ReplicatorEvent[] = [];
    r.on((e) => events.push(e));
    try {
      assert.equal(r.status().txid, 1, "the first snapshot is txid 1");
      await writeWorkload(con, seed);
      await sleep(200);

      // inspect() mid-flight: the WAL holds the schema's commit and every workload commit.
      const live = inspect(db);
      assertInspectShape(live);
      assert.equal(live.wal?.commits, 1 + COMMITS, `the WAL holds every commit ${why}`);

      await r.withPinReleased(() => assert.deepEqual(checkpoint(con, "TRUNCATE"), [0, 0, 0]));
      const source = sourceFingerprint(con);
      const stopped = await r.stop();
      assert.deepEqual(stopped, { pendingObjects: 0, pendingBytes: 0 }, "stop() shipped everything");
      const s = r.status();
      assert.equal(s.txid, 1 + COMMITS, `one txid per commit ${why}`);
      assert.equal(s.uploadedTxid, s.txid);

      const output = path.join(dir, "restored.db");
      const restored = await restore({ replica: url, output });
      assert.equal(restored.output, output);
      assert.equal(restored.txid, 1 + COMMITS);
      assert.equal(restored.generation, s.generation);
      assert.ok(restored.time >= started && restored.time <= Date.now(), `observed between start and now: ${restored.time}`);
      assertSameFile(output, db);
      assert.equal(await integrityCheck(output), "ok");
      assert.deepEqual(await fileFingerprint(output), source, "same rows, same contents");
      assert.equal((await workloadState(output)).k, COMMITS);

      // An earlier txid by the module API, too.
      const earlier = path.join(dir, "earlier.db");
      const e = await restore({ replica: url, output: earlier, txid: 1 + 100 });
      assert.equal(e.txid, 101);
      assert.equal((await workloadState(earlier)).k, 100);
      await assert.rejects(restore({ replica: url, output: earlier, txid: 1 + 100 }), /exists/, "no overwrite without force");
      assert.equal((await restore({ replica: url, output: earlier, txid: 1 + 50, force: true })).txid, 51);

      // Events.
      const snapshots = events.filter((e) => e.type === "snapshot");
      // The first snapshot is taken inside replicate(), before on() could subscribe;
      // it shows in the status and in the replica, and its generation is the restore's.
      assert.equal(s.snapshots, 1);
      assert.deepEqual(snapshots, [], "no later snapshot: the WAL never restarted unread");
      const segments = events.filter((e) => e.type === "segment");
      assert.ok(segments.length >= 2, `segments were built: ${segments.length}`);
      const syncs = events.filter((e) => e.type === "sync") as Array<Extract<ReplicatorEvent, { type: "sync" }>>;
      assert.ok(syncs.length >= 1, `"sync" events as objects reach the replica; events: ${[...new Set(events.map((e) => e.type))]}`);
      for (const e of syncs) {
        assert.equal(e.replica, s.replica, "sync names the replica");
        assert.equal(typeof e.key, "string");
        assert.ok(e.txid >= 1 && e.txid <= s.txid);
      }
      assert.equal(Math.max(...syncs.map((e) => e.txid)), s.txid, "the last sync is the final txid");
      assert.deepEqual(events.filter((e) => e.type === "repair" || e.type === "heal"), []);
    } finally {
      await r.stop().catch(() => {});
      con.close();
    }
  }));

test("module: replicate() with a short snapshot interval reports \"snapshot\" and \"sync\" events", () =>
  withTempDir("module-snapshot-events", async (dir) => {
    const db = path.join(dir, "app.db");
    const url = pathToFileURL(path.join(dir, "replica")).href;
    const con = await openRuntimeWriter(db);
    const r = await replicate({ db, replica: url, syncInterval: 50, snapshotInterval: "300ms", cacheDir: path.join(dir, "cache") });
    const events: ReplicatorEvent[] = [];
    r.on((e) => events.push(e));
    try {
      const rand = prng(testSeed());
      for (let k = 1; k <= 40; k++) {
        runtimeTransaction(con, rand, k, []);
        await sleep(20);
      }
      await waitFor(() => `a "snapshot" event; got ${events.map((e) => e.type).join(", ")}`, () => events.some((e) => e.type === "snapshot"), 20_000);
      await r.flush();
      await r.stop();
      const s = r.status();
      const snapshots = events.filter((e) => e.type === "snapshot") as Array<Extract<ReplicatorEvent, { type: "snapshot" }>>;
      assert.ok(snapshots.length >= 1, `a "snapshot" event at a 300 ms interval; got ${events.map((e) => e.type).join(", ")}`);
      for (const e of snapshots) {
        assert.equal(e.generation, s.generation, "a scheduled snapshot stays in the generation");
        assert.ok(e.txid > 1 && e.txid <= s.txid);
        assert.equal(typeof e.reason, "string");
      }
      assert.equal(s.snapshots, 1 + snapshots.length, "the first one was taken inside replicate()");
      const syncs = events.filter((e) => e.type === "sync") as Array<Extract<ReplicatorEvent, { type: "sync" }>>;
      assert.ok(syncs.length >= 1, `at least one "sync" event; got ${events.map((e) => e.type).join(", ")}`);
      for (const e of snapshots) {
        assert.ok(syncs.some((x) => x.txid === e.txid && events.indexOf(x) > events.indexOf(e)), `snapshot ${e.txid} reached the replica`);
      }
      assert.equal(Math.max(...syncs.map((e) => e.txid)), s.txid);
      const output = path.join(dir, "restored.db");
      assert.equal((await restore({ replica: url, output })).txid, s.txid);
      assert.equal((await workloadState(output)).k, 40);
    } finally {
      await r.stop().catch(() => {});
      con.close();
    }
  }));

test("module: a Replicator subscribed before start() sees the first \"snapshot\", then \"sync\"s", () =>
  withTempDir("module-events", async (dir) => {
    const db = path.join(dir, "app.db");
    const url = pathToFileURL(path.join(dir, "replica")).href;
    const con = await openRuntimeWriter(db);
    // replicate() resolves after the first snapshot: to see it, start a Replicator
    // by hand through the class the module exports, subscribed before start().
    const { Replicator } = await import("../src/mod.ts");
    const { openReplica } = await import("../src/replica/open_replica.ts");
    const r = new Replicator(db, { storage: openReplica(url), syncInterval: 50, cacheDir: path.join(dir, "cache") });
    const events: ReplicatorEvent[] = [];
    r.on((e) => events.push(e));
    try {
      await r.start();
      const rand = prng(testSeed());
      for (let k = 1; k <= 30; k++) runtimeTransaction(con, rand, k, []);
      await r.flush();
      await r.stop();
      const snapshot = events.find((e) => e.type === "snapshot");
      assert.ok(snapshot, `a "snapshot" event; got ${events.map((e) => e.type).join(", ")}`);
      assert.equal(snapshot.txid, 1);
      assert.equal(snapshot.generation, r.status().generation);
      assert.equal(typeof snapshot.reason, "string");
      const syncs = events.filter((e) => e.type === "sync") as Array<Extract<ReplicatorEvent, { type: "sync" }>>;
      assert.ok(syncs.length >= 2, `"sync" events for the snapshot and segments; got ${events.map((e) => e.type).join(", ")}`);
      assert.equal(syncs[0].txid, 1, "the snapshot reaches the replica first");
      assert.equal(syncs.at(-1)!.txid, 31);
      assert.ok(events.indexOf(snapshot) < events.indexOf(syncs[0]), "snapshot before its sync");
    } finally {
      await r.stop().catch(() => {});
      con.close();
    }
  }));

test("module: inspect(db) is the object `walship inspect --json` prints", () =>
  withTempDir("module-inspect", async (dir) => {
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db, ["PRAGMA wal_autocheckpoint=0"]);
    try {
      const rand = prng(testSeed());
      for (let k = 1; k <= 25; k++) runtimeTransaction(con, rand, k, []);
      const report = inspect(db);
      assertInspectShape(report);
      assert.equal(report.wal?.commits, 26);
      const cli = await runWalship(["inspect", db, "--json"]);
      assert.equal(cli.code, 0, cli.stderr);
      assert.deepEqual(JSON.parse(cli.stdout), JSON.parse(JSON.stringify(report)));
      assert.throws(() => inspect(path.join(dir, "missing.db")), /missing\.db/);
    } finally {
      con.close();
    }
  }));

test("module: replicate({ replica: [urlA, urlB] }) ships to both; each restores the same bytes", () =>
  withTempDir("module-two-replicas", async (dir) => {
    const seed = testSeed();
    const db = path.join(dir, "app.db");
    const urls = ["replica-a", "replica-b"].map((d) => pathToFileURL(path.join(dir, d)).href);
    const con = await openRuntimeWriter(db, ["PRAGMA wal_autocheckpoint=0"]);
    const r = await replicate({ db, replica: urls, syncInterval: "50ms", cacheDir: path.join(dir, "cache") });
    const events: ReplicatorEvent[] = [];
    r.on((e) => events.push(e));
    try {
      await writeWorkload(con, seed);
      await r.withPinReleased(() => assert.deepEqual(checkpoint(con, "TRUNCATE"), [0, 0, 0]));
      const source = sourceFingerprint(con);
      assert.deepEqual(await r.stop(), { pendingObjects: 0, pendingBytes: 0 });
      const s = r.status();
      assert.equal(s.txid, 1 + COMMITS);
      assert.deepEqual(s.replicas.map((x) => x.replica), [s.replica, s.replicas[1].replica], "status().replicas lists both");
      assert.equal(s.replicas.length, 2, `status().replicas lists both: ${JSON.stringify(s)}`);
      for (const rs of s.replicas) {
        assert.equal(rs.uploadedTxid, s.txid, `${rs.replica} has every txid`);
        assert.equal(rs.pendingObjects, 0);
      }

      const results = [];
      for (const [i, url] of urls.entries()) {
        const output = path.join(dir, `restored-${i}.db`);
        const res = await restore({ replica: url, output });
        assert.equal(res.txid, 1 + COMMITS, url);
        assertSameFile(output, db, `database restored from ${url}`);
        assert.deepEqual(await fileFingerprint(output), source, url);
        results.push(res);
      }
      assert.equal(results[0].generation, results[1].generation, "one generation, in both replicas");
      assert.equal(results[0].generation, s.generation);
      assert.equal(results[0].time, results[1].time, "the same observed state");

      const syncs = events.filter((e) => e.type === "sync") as Array<Extract<ReplicatorEvent, { type: "sync" }>>;
      const byReplica = new Map<string, number>();
      for (const e of syncs) byReplica.set(e.replica, Math.max(byReplica.get(e.replica) ?? 0, e.txid));
      assert.equal(byReplica.size, 2, `"sync" events name each replica: ${[...byReplica.keys()].join(", ")}`);
      for (const [replica, txid] of byReplica) assert.equal(txid, s.txid, `${replica}'s last sync is the final txid`);
      for (const url of urls) assert.ok(fs.readdirSync(new URL(url)).length > 0, `${url} holds objects`);
    } finally {
      await r.stop().catch(() => {});
      con.close();
    }
  }));
