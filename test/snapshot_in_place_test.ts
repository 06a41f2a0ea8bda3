/**
 * Snapshots read the live database in place (readConsistentImage), laying
 * the WAL's frames up to the polled commit over each run of pages, and prove
 * afterwards that no checkpoint wrote a later frame into the file meanwhile
 * (DESIGN.md invariant 3). Each case checks the image handed to `use`
 * against a copy-made image (captureImage) of the state it claims:
 *
 * - nothing moves: the image is read in place (no copy made) and is the
 *   state at the polled commit;
 * - a commit and a checkpoint of it between two runs of the read: that read
 *   fails its proof and is discarded, and the next read is the new state;
 * - a checkpoint holding CKPT across the end of a read (as one mid-copy
 *   does): that read is discarded too;
 * - a checkpoint during every read: after three direct reads the database is
 *   copied first, and that image is right.
 *
 * And the replicator's choice: its first snapshot reads in place when it
 * holds its read slot, or when there is no WAL; unpinned beside a live WAL
 * it copies first (the proof would often fail there). Each way the
 * snapshot restores to the database.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { captureImage, type ImageView, readConsistentImage } from "../src/capture/snapshot_reader.ts";
import { WalFollower } from "../src/capture/wal_follower.ts";
import { F_UNLCK, F_WRLCK, type FileLocks, loadFileLocks } from "../src/runtime.ts";
import { SHM_LOCK } from "../src/sqlite/wal_index.ts";
import { Replicator } from "../src/replicate/replicator.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import type { WalPosition } from "../src/sqlite/wal_scanner.ts";
import { openSqlite, type SqliteConnection, test } from "./_runtime.ts";
import { assertSameFile, checkpoint, recordingLog } from "./_replication_fixtures.ts";
import { withTempDir } from "./_util.ts";

const PAGE = 4096;
const ROWS = 1200;

/**
 * About 4.5 MiB of 3,500-byte rows (one per page, ids in page order), all
 * checkpointed; then commits that touch only the first rows stay in the WAL.
 */
async function liveDatabase(db: string): Promise<SqliteConnection> {
  const con = await openSqlite(db);
  con.exec(`PRAGMA page_size=${PAGE}`);
  assert.equal(con.all<{ journal_mode: string }>("PRAGMA journal_mode=WAL")[0].journal_mode, "wal");
  con.exec("PRAGMA wal_autocheckpoint=0");
  con.exec("CREATE TABLE bulk(id INTEGER PRIMARY KEY, data BLOB NOT NULL)");
  con.exec(`WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ${ROWS})
    INSERT INTO bulk(id, data) SELECT x, randomblob(3500) FROM n`);
  checkpoint(con, "TRUNCATE");
  for (let k = 0; k < 5; k++) con.exec(`UPDATE bulk SET data = randomblob(3500) WHERE id <= ${20 + k}`);
  return con;
}

/** Runs `fn` beside a live database (liveDatabase) in a fresh directory, closing the connection after. */
function withLiveDatabase(
  name: string,
  fn: (db: string, con: SqliteConnection, dir: string) => Promise<void>,
): Promise<void> {
  return withTempDir(name, async (dir) => {
    const db = path.join(dir, "app.db");
    const con = await liveDatabase(db);
    try {
      await fn(db, con, dir);
    } finally {
      con.close();
    }
  });
}

/** Rewrites rows far into the file (past the first 1 MiB run), none of them in the WAL yet. */
function rewriteTail(con: SqliteConnection, round: number): void {
  con.exec(`UPDATE bulk SET data = randomblob(3500) WHERE id > ${ROWS - 300} AND id % 3 = ${round % 3}`);
}

interface Taken {
  bytes: Uint8Array;
  position: WalPosition | null;
  dbSize: number;
}

/** Reads every run of `image` into one buffer (runs are reused, so each is copied). */
async function take(image: ImageView): Promise<Taken> {
  const parts: Uint8Array[] = [];
  for await (const { chunk } of image.chunks()) parts.push(chunk.slice());
  return { bytes: Buffer.concat(parts), position: image.position, dbSize: image.dbSize };
}

/** A copy-made image of the database as it is now (no writes are running). */
async function reference(db: string, dir: string): Promise<Taken> {
  const follower = new WalFollower(db, null);
  follower.rebase(null, 0, 0);
  const target = path.join(dir, `reference-${Date.now()}-${Math.random()}`);
  try {
    const image = await captureImage(db, follower, target, { baseline: true, onPoll: () => {} });
    return { bytes: fs.readFileSync(target), position: image.position, dbSize: image.dbSize };
  } finally {
    follower.close();
    fs.rmSync(target, { force: true });
  }
}

async function fileLocks(): Promise<FileLocks> {
  const locks = await loadFileLocks();
  assert.ok(typeof locks !== "string", `libc's locks are needed here: ${locks}`);
  return locks;
}

interface Run {
  result: Taken;
  discarded: Taken[];
  copied: string[];
  copyPath: string;
}

/** readConsistentImage with `beforeRun(attempt, first)`; attempts count the direct reads. */
async function readImage(
  db: string,
  dir: string,
  beforeRun: (attempt: number, first: number) => void,
): Promise<Run> {
  const follower = new WalFollower(db, null);
  follower.rebase(null, 0, 0);
  const discarded: Taken[] = [];
  const copied: string[] = [];
  const copyPath = path.join(dir, "copy");
  let attempt = 0;
  try {
    const result = await readConsistentImage(db, follower, {
      baseline: true,
      onPoll: () => {},
      locks: await fileLocks(),
      copyPath,
      onCopy: (why) => copied.push(why),
      beforeRun: (first) => {
        if (first === 1) attempt++;
        beforeRun(attempt, first);
      },
      discard: (value) => discarded.push(value),
    }, take);
    return { result, discarded, copied, copyPath };
  } finally {
    follower.close();
  }
}

function assertSameImage(actual: Taken, expected: Taken, what: string): void {
  assert.deepEqual(actual.position, expected.position, `${what}: position`);
  assert.equal(actual.dbSize, expected.dbSize, `${what}: size in pages`);
  assert.equal(actual.bytes.length, expected.dbSize * PAGE, `${what}: bytes`);
  assert.ok(Buffer.compare(actual.bytes, expected.bytes) === 0, `${what}: the bytes of the state it claims`);
}

test("in place: with nothing moving, the image is read from the live file (no copy) and is the polled state", () =>
  withLiveDatabase("snapshot-in-place", async (db, _con, dir) => {
    const expected = await reference(db, dir);
    assert.ok(expected.position && expected.position.frame > 0, "frames in the WAL to lay over the file");
    let runs = 0;
    const run = await readImage(db, dir, () => runs++);
    assert.ok(runs >= 4, `read in runs of about 1 MiB, got ${runs}`);
    assert.deepEqual(run.copied, []);
    assert.equal(run.discarded.length, 0);
    assert.ok(!fs.existsSync(run.copyPath), "no copy of the database was made");
    assertSameImage(run.result, expected, "the image read in place");
  }));

test("in place: a commit checkpointed between two runs fails the proof; the read is discarded and done again", () =>
  withLiveDatabase("snapshot-in-place-ckpt", async (db, con, dir) => {
    const before = await reference(db, dir);
    const run = await readImage(db, dir, (attempt, first) => {
      // In the second or third run of the first read only.
      if (attempt !== 1 || first === 1 || first >= 1 + 2 * (1 << 20) / PAGE) return;
      rewriteTail(con, first);
      const [busy, log, done] = checkpoint(con, "PASSIVE");
      assert.deepEqual([busy, done], [0, log], "the checkpoint copied every frame, the new ones too");
    });
    assert.equal(run.discarded.length, 1, "the first read was not proven");
    assertSameImage(run.discarded[0], { ...before, bytes: run.discarded[0].bytes }, "the discarded read");
    assert.ok(
      Buffer.compare(run.discarded[0].bytes, before.bytes) !== 0,
      "the discarded read mixed two states (else this case tests nothing)",
    );
    assert.deepEqual(run.copied, []);
    assertSameImage(run.result, await reference(db, dir), "the second read");
  }));

test("in place: a checkpoint holding CKPT when a read ends fails the proof", () =>
  withLiveDatabase("snapshot-in-place-lock", async (db, _con, dir) => {
    const locks = await fileLocks();
    const shm = locks.open(`${db}-shm`, true);
    assert.ok(shm.fd >= 0, `open the -shm (errno ${shm.errno})`);
    try {
      const expected = await reference(db, dir);
      const run = await readImage(db, dir, (attempt, first) => {
        // Held from the second run of the first read to the start of the second read.
        if (attempt === 1 && first > 1) assert.ok(locks.setLock(shm.fd, F_WRLCK, SHM_LOCK.CKPT, 1));
        if (attempt === 2 && first === 1) assert.ok(locks.setLock(shm.fd, F_UNLCK, SHM_LOCK.CKPT, 1));
      });
      assert.equal(run.discarded.length, 1, "the read that ended under a running checkpoint was not proven");
      assert.deepEqual(run.copied, []);
      assertSameImage(run.result, expected, "the second read");
    } finally {
      locks.close(shm.fd);
    }
  }));

test("in place: a checkpoint during every read; after three the database is copied first, and that image is right", () =>
  withLiveDatabase("snapshot-in-place-copy", async (db, con, dir) => {
    const run = await readImage(db, dir, (_attempt, first) => {
      if (first !== 1 + (1 << 20) / PAGE) return;
      rewriteTail(con, first);
      checkpoint(con, "PASSIVE");
    });
    assert.equal(run.discarded.length, 3);
    assert.equal(run.copied.length, 1);
    assert.match(run.copied[0], /^3 direct reads failed, the last because (a checkpoint copied frames past \d+|the WAL restarted)/);
    assert.ok(!fs.existsSync(run.copyPath), "the copy is removed afterwards");
    assertSameImage(run.result, await reference(db, dir), "the copied image");
  }));

const replicatorCases = [
  { name: "pinned, beside a live WAL", pin: true, live: true, copies: false },
  { name: "unpinned, with no WAL", pin: false, live: false, copies: false },
  { name: "unpinned, beside a live WAL", pin: false, live: true, copies: true },
];

for (const c of replicatorCases) {
  const does = c.copies ? "copies the database first" : "reads it in place";
  test(`replicator, ${c.name}: the first snapshot ${does}, and restores to the database`, () =>
    withTempDir("snapshot-in-place-replicator", async (dir) => {
      const db = path.join(dir, "app.db");
      const con = await liveDatabase(db);
      if (!c.live) con.close(); // the last connection checkpoints and deletes the WAL
      assert.equal(fs.existsSync(`${db}-wal`), c.live);
      const log = recordingLog();
      const storage = await openReplica(`file://${path.join(dir, "replica")}`);
      const r = new Replicator(db, { storage, cacheDir: path.join(dir, "cache"), pin: c.pin, log });
      try {
        await r.start();
        await r.flush();
      } finally {
        await r.stop();
      }
      const copies = log.lines.filter((l) => l.message.startsWith("snapshot: copying the database first"));
      assert.deepEqual(
        copies.map((l) => l.message),
        c.copies ? ["snapshot: copying the database first: walship does not hold its read slot now"] : [],
      );
      assert.deepEqual(log.lines.filter((l) => l.message.includes("not proven")), []);
      if (c.live) {
        checkpoint(con, "TRUNCATE");
        con.close();
      }
      const out = path.join(dir, "restored.db");
      await restoreDatabase({ storage, output: out });
      assertSameFile(out, db, "the restored snapshot");
    }));
}
