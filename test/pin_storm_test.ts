/**
 * The pin under a write storm (DESIGN.md, "The pin"; invariants 4 and 7):
 * a Python process commits hundreds of small transactions back to back with
 * `wal_autocheckpoint=10` and its own TRUNCATE checkpoint every 20 commits,
 * while `walship replicate` runs as a subprocess.
 *
 * - pinned (the default): every app checkpoint goes through (busy 0) within
 *   a second, walship never needs to heal or repair, one generation holds
 *   every commit as exactly one txid, and any `--txid` restores exactly the
 *   state the writer saw after that commit;
 * - pinned, with no app checkpoint: the WAL still restarts once it passes
 *   1,000 frames, and no commit is missed in the moment the slot is let go
 *   (a writer pausing between commits: a saturated one leaves no moment in
 *   which the WAL is fully backfilled and read to its end);
 * - `--no-pin`: the WAL restarts faster than walship reads it; the commit
 *   ledger notices, and walship heals (or starts a generation) with a
 *   reason logged at warn level. The replica still ends exact, and restores
 *   by txid or by time only ever give states the writer really had, in
 *   order;
 * - pinned by a user who may not write the -shm (run as another user, as
 *   root only): the pin holds a slot without a read mark, and every app
 *   checkpoint still goes through.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { test } from "./_runtime.ts";
import { quantile, type StormCommit, type StormOptions, type StormResult, StormWriter } from "./_pin_fixtures.ts";
import {
  assertContiguous,
  assertSameFile,
  type BackendName,
  BACKENDS,
  cliGenerations,
  closeSharedS3,
  freshReplica,
  integrityCheck,
  restoreTo,
  startReplicate,
  testSeed,
  workloadState,
} from "./_replication_fixtures.ts";
import { between, prng, withTempDir } from "./_util.ts";

const TRANSACTIONS = 800;
const TRUNCATE_EVERY = 20;

/** A restored state must be one the writer recorded: (k, rows) after commit k (k = 0: the empty tables). */
function assertRecorded(state: { k: number; rows: number }, recorded: Map<number, StormCommit>, what: string): void {
  if (state.k === 0) return assert.equal(state.rows, 0, `${what}: commit 0 had no rows`);
  const c = recorded.get(state.k);
  assert.ok(c, `${what}: commit ${state.k} was never made`);
  assert.equal(state.rows, c.rows, `${what} is commit ${state.k}, which left ${c.rows} rows, not ${state.rows}`);
}

/**
 * Runs a storm with walship pinned, and checks what every pinned run must
 * show: no warning, no heal or repair, one generation whose snapshot is txid
 * 1 (commit 0) followed by exactly one txid per commit, the latest restore
 * equal to the source, and random `--txid` restores equal to the writer's
 * state after that commit. `check` looks at the storm first, as soon as it
 * is over. Returns the storm.
 */
async function pinnedStorm(
  backend: BackendName,
  dir: string,
  options: Omit<StormOptions, "seed">,
  check: (storm: StormResult) => void = () => {},
  how: { replicate?: Parameters<typeof startReplicate>[2]; readMark?: boolean } = {},
): Promise<StormResult> {
  const seed = testSeed();
  const rand = prng(seed);
  const why = `(seed ${seed}, WALSHIP_TEST_SEED reproduces it)`;
  const replica = await freshReplica(backend, dir);
  const db = path.join(dir, "app.db");
  const writer = await StormWriter.start(db, { seed, ...options });
  const p = startReplicate(db, replica, how.replicate);
  try {
    await p.waitForLog(/^replicating$/);
    writer.go();
    const storm = await writer.done();
    check(storm);
    assert.deepEqual(storm.final.result, [0, 0, 0], "the final TRUNCATE checkpoint went through");
    const last = 1 + storm.commits.length;
    // SIGTERM ships everything committed and waits for the uploads.
    assert.equal(await p.terminate(), 0, p.stderr);
    const pinned = p.log.filter((l) => /^pinned/.test(l.message));
    assert.equal(pinned.length, 1, `"pinned" once:\n${p.stderr}`);
    const readMark = how.readMark ?? true;
    assert.equal(pinned[0].fields.readMark, readMark, `the pin's slot ${readMark ? "carries" : "has no"} read mark`);
    const lost = p.log.filter((l) => /heal|repair|continuity lost|new generation/i.test(l.message)).map((l) => l.message);
    assert.deepEqual(lost, [], `no heal, no repair ${why}`);
    assert.deepEqual(p.log.filter((l) => l.level === "warn" || l.level === "error"), [], `no warning ${why}`);
    const stopped = p.log.find((l) => l.message === "stopped");
    assert.ok(stopped, p.stderr);
    assert.equal(stopped.fields.txid, last, `every commit is exactly one txid ${why}`);
    assert.equal(stopped.fields.uploadedTxid, last);
    const gens = await cliGenerations(replica);
    assert.equal(gens.length, 1, "one generation");
    assert.equal(gens[0].firstTxid, 1);
    assert.equal(gens[0].lastTxid, last);
    assert.equal(gens[0].snapshots, 1);

    // The writer's final TRUNCATE put everything into the file itself.
    const latest = path.join(dir, "latest.db");
    const r = await restoreTo(replica, latest);
    assert.equal(r.txid, last);
    assertSameFile(latest, db);
    assert.equal(await integrityCheck(latest), "ok");

    // txid T is commit T - 1, with the rows the writer counted after it.
    const recorded = new Map(storm.commits.map((c) => [c.k, c]));
    const at = path.join(dir, "at-txid.db");
    const txids = new Set([2, last]);
    while (txids.size < 6) txids.add(between(rand, 2, last));
    for (const txid of txids) {
      const e = await restoreTo(replica, at, { txid });
      assert.equal(e.txid, txid);
      const state = await workloadState(at);
      assert.equal(state.k, txid - 1, `txid ${txid} should be commit ${txid - 1} ${why}`);
      assertRecorded(state, recorded, `txid ${txid}`);
      assert.equal(await integrityCheck(at), "ok");
    }
    return storm;
  } finally {
    p.signal("SIGKILL");
    await writer.close().catch(() => writer.dispose());
  }
}

for (const backend of BACKENDS) {
  test(`${backend}: pinned, a write storm's TRUNCATE checkpoints each go through within 1 s, and every commit is one txid`, () =>
    withTempDir("pin-storm", async (dir) => {
      await pinnedStorm(backend, dir, {
        transactions: TRANSACTIONS,
        truncateEvery: TRUNCATE_EVERY,
        autocheckpoint: 10,
        busyTimeout: 5000,
        stopOnBusy: true,
      }, (storm) => assertCheckpointsWentThrough(storm, `pinned storm (${backend})`));
    }));

  test(`${backend}: with --no-pin, a write storm outruns walship; it heals with logged reasons and never restores a state that did not exist`, () =>
    withTempDir("nopin-storm", async (dir) => {
      const seed = testSeed();
      const rand = prng(seed);
      const why = `(seed ${seed}, WALSHIP_TEST_SEED reproduces it)`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const writer = await StormWriter.start(db, {
        seed,
        transactions: TRANSACTIONS,
        truncateEvery: TRUNCATE_EVERY,
        autocheckpoint: 10,
        busyTimeout: 5000,
      });
      const p = startReplicate(db, replica, { extra: ["--no-pin"] });
      try {
        await p.waitForLog(/^replicating$/);
        writer.go();
        const storm = await writer.done();
        for (const c of [...storm.checkpoints, storm.final]) {
          assert.deepEqual(c.result, [0, 0, 0], `nothing holds back the TRUNCATE checkpoint after commit ${c.after}`);
        }
        const commits = storm.commits.length;
        assert.equal(commits, TRANSACTIONS);
        // SIGTERM ships everything committed (healing first if the ledger says so) and waits for the uploads.
        assert.equal(await p.terminate(), 0, p.stderr);
        const latest = path.join(dir, "latest.db");

        // It says once that it runs unpinned, and never that it is pinned.
        const unpinned = p.log.filter((l) => /unpinned/.test(l.message));
        assert.equal(unpinned.length, 1, `"unpinned" once:\n${p.stderr}`);
        assert.equal(unpinned[0].level, "warn");
        assert.equal(p.log.filter((l) => /^pinned/.test(l.message)).length, 0);

        // Every lost continuity is a warning that names its reason and what was done.
        const lost = p.log.filter((l) => /continuity lost/.test(l.message));
        assert.ok(lost.length > 0, `the ledger caught the restarts that outran walship ${why}:\n${p.stderr}`);
        let generations = 0;
        for (const l of lost) {
          assert.equal(l.level, "warn", l.message);
          const m = l.message.match(/^continuity lost: (.+); (healed by shipping the \d+ page\(s\) that differ|starting a new generation from a snapshot)$/);
          assert.ok(m, `"${l.message}" names the reason and the remedy`);
          assert.ok(m[1].length > 10, `a real reason: "${m[1]}"`);
          if (m[2].startsWith("starting")) generations++;
        }
        const gens = await assertContiguous(replica);
        assert.equal(gens.length, 1 + generations, "a new generation only with a logged reason");

        // The latest state is the source, byte for byte (the writer's final TRUNCATE put it all in the file).
        const r = await restoreTo(replica, latest);
        assert.equal(r.txid, gens.at(-1)!.lastTxid);
        assertSameFile(latest, db);
        assert.equal(await integrityCheck(latest), "ok");

        // Restores by txid and by time give only states the writer had, never going back.
        const recorded = new Map(storm.commits.map((c) => [c.k, c]));
        const first = gens[0].firstTxid;
        const last = gens.at(-1)!.lastTxid;
        const out = path.join(dir, "pit.db");
        const txids = new Set<number>();
        while (txids.size < Math.min(8, last - first + 1)) txids.add(between(rand, first, last));
        let prevK = -1;
        for (const txid of [...txids].sort((a, b) => a - b)) {
          const e = await restoreTo(replica, out, { txid });
          assert.equal(e.txid, txid);
          const state = await workloadState(out);
          assertRecorded(state, recorded, `txid ${txid}`);
          assert.ok(state.k >= prevK, `txid ${txid} is commit ${state.k}, before the ${prevK} of a lower txid ${why}`);
          prevK = state.k;
        }
        const t0 = storm.commits[0].started;
        const t1 = storm.commits.at(-1)!.committed + 200;
        const instants = Array.from({ length: 8 }, () => t0 + (rand() % Math.max(1, Math.floor(t1 - t0))))
          .sort((a, b) => a - b);
        prevK = -1;
        for (const t of instants) {
          const e = await restoreTo(replica, out, { timestamp: t });
          assert.ok(e.time <= t, `restored a state observed at ${e.time}, after ${t}`);
          const state = await workloadState(out);
          assertRecorded(state, recorded, `time ${t}`);
          if (state.k > 0) {
            assert.ok(recorded.get(state.k)!.started <= t, `time ${t} restored commit ${state.k}, begun only later ${why}`);
          }
          assert.ok(state.k >= prevK, `time ${t} is commit ${state.k}, before the ${prevK} of an earlier time ${why}`);
          prevK = state.k;
        }
      } finally {
        p.signal("SIGKILL");
        await writer.close().catch(() => writer.dispose());
      }
    }));
}

/** Every checkpoint of a storm came back done (busy 0) and within 1 s (a busy one waits the whole 5 s timeout). */
function assertCheckpointsWentThrough(storm: StormResult, what: string): void {
  const checkpoints = [...storm.checkpoints, storm.final];
  const ms = checkpoints.map((c) => c.ms);
  if (process.env.WALSHIP_TEST_ECHO) {
    console.error(`${what}: ${checkpoints.length} TRUNCATE checkpoints, ms p50 ` +
      `${quantile(ms, 0.5).toFixed(1)} p90 ${quantile(ms, 0.9).toFixed(1)} max ${Math.max(...ms).toFixed(1)}`);
  }
  for (const c of checkpoints) {
    assert.deepEqual(c.result, [0, 0, 0], `the TRUNCATE checkpoint after commit ${c.after} went through`);
    assert.ok(c.ms < 1000, `the TRUNCATE checkpoint after commit ${c.after} took ${c.ms.toFixed(0)} ms`);
  }
  assert.equal(storm.commits.length, TRANSACTIONS, "the storm ran to its end");
  assert.equal(storm.checkpoints.length, TRANSACTIONS / TRUNCATE_EVERY);
}

// walship run by a user who may read the database and its -shm but not write
// them (another account than the app's): the pin then holds a read slot
// without setting a read mark, and must still let each TRUNCATE checkpoint
// through. Only root can start walship as another user (setpriv), as CI runs.
const NOBODY = 65534;
const asRoot = process.getuid?.() === 0 && spawnSync("setpriv", ["--version"]).status === 0;
test(`file: pinned by a user who cannot write the -shm (no read marks), ${asRoot ? "" : "[needs root and setpriv: NOT RUN] "}every TRUNCATE checkpoint of a write storm goes through and every commit is one txid`, () => {
  if (!asRoot) return console.error("pin_storm_test: not root (or no setpriv): the read-only -shm case was not run");
  return withTempDir("pin-readonly", async (dir) => {
    // walship (as nobody) writes its cache and the file replica here; the app's files stay 0644, root's.
    fs.chmodSync(dir, 0o777);
    await pinnedStorm("file", dir, {
      transactions: TRANSACTIONS,
      truncateEvery: TRUNCATE_EVERY,
      autocheckpoint: 10,
      busyTimeout: 5000,
      stopOnBusy: true,
    }, (storm) => assertCheckpointsWentThrough(storm, "read-only -shm storm"), {
      replicate: { wrap: ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups"], env: { HOME: dir } },
      readMark: false,
    });
  });
});

/** The largest the storm's WAL got, in frames of 4 KiB pages (said with WALSHIP_TEST_ECHO, with its restarts). */
function largestWal(storm: StormResult): number {
  const frames = Math.floor(storm.maxWalBytes / (4096 + 24));
  if (process.env.WALSHIP_TEST_ECHO) console.error(`restarts ${storm.restarts}, largest WAL ${frames} frames`);
  return frames;
}

/** Pinned storms with no app checkpoint: only walship's restart windows keep the WAL from growing. */
const restartCases: Array<{ name: string; dir: string; options: Omit<StormOptions, "seed">; check: (storm: StormResult, frames: number) => void }> = [
  {
    // Autocheckpoints backfill the WAL every few commits, but only a restart
    // empties it: walship lets its slot go for one once the WAL holds 1,000
    // frames (in a pause between commits), and no second restart may
    // overwrite the new WAL before walship has its slot back.
    name: "s3: pinned, a busy writer with no app checkpoint gets its WAL restarted past 1,000 frames, and no commit is missed",
    dir: "pin-restart",
    options: { transactions: 1500, truncateEvery: 0, autocheckpoint: 10, busyTimeout: 5000, pauseMs: [0.5, 2] },
    check: (storm, frames) => assert.ok(storm.restarts >= 1, `the WAL restarted (it grew to ${frames} frames)`),
  },
  {
    // Each commit is ~16 to 50 frames and the writer never pauses: a restart
    // window opened while walship is behind, or watched only between long
    // reads, lets the new WAL restart again (after its own 1,000 frames)
    // before walship looks, and the commits in between are lost to a heal.
    name: "s3: pinned, a saturated writer of ~64 KiB blobs with SQLite's default autocheckpoint misses no commit",
    dir: "pin-blobs",
    options: {
      transactions: 800,
      truncateEvery: 0,
      autocheckpoint: 1000,
      busyTimeout: 5000,
      blobBytes: [48 << 10, 64 << 10],
      synchronous: "NORMAL",
    },
    check: (_storm, frames) => assert.ok(frames > 1000, `the WAL grew past 1,000 frames (${frames})`),
  },
];

for (const c of restartCases) {
  test(c.name, () =>
    withTempDir(c.dir, async (dir) => {
      const storm = await pinnedStorm("s3", dir, c.options);
      c.check(storm, largestWal(storm));
    }));
}

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
