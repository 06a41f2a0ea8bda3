/**
 * Point in time across a heal (DESIGN.md invariant 7, docs/DECISIONS.md: "a
 * heal's txid stands for every commit that went by unread"): walship is
 * SIGKILLed under a live Python writer, the WAL is truncated while it is
 * down, and the restart heals. Restores at every txid near the heal and at
 * random instants around it, on both backends, never return a state the
 * writer did not have: each is a (k, rows) pair the writer recorded, k never
 * goes back as the txid or the time grows, one commit per txid except at the
 * heal, and a restore at time T holds a commit begun before T and is the
 * last transaction observed at or before T.
 */

import assert from "node:assert/strict";
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
  PythonWriter,
  readSideFile,
  readSideTimes,
  replicaHeals,
  restoreTo,
  startReplicate,
  testSeed,
  type WalshipProcess,
  workloadState,
} from "./_replication_fixtures.ts";
import { isHealLine, makeBulkDatabase } from "./_heal_fixtures.ts";
import { between, prng, sleep, withTempDir } from "./_util.ts";

for (const backend of BACKENDS) {
  test(`${backend}: restores at txids and instants around a heal only give states the writer had`, () =>
    withTempDir("heal-pit", async (dir) => {
      const seed = testSeed();
      const rand = prng(seed);
      const why = `(seed ${seed})`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const side = path.join(dir, "side.txt");
      makeBulkDatabase(db, 2);
      const writer = await PythonWriter.start(db, { seed, side, sleepMs: [1, 4] });
      const runs: WalshipProcess[] = [];
      try {
        runs.push(startReplicate(db, replica));
        await runs[0].waitForLog(/^replicating$/);
        await writer.waitForCommits(60);
        await sleep(between(rand, 0, 300));
        await runs[0].kill();
        assert.equal((await writer.truncate())[0], 0);
        await sleep(between(rand, 200, 500));
        runs.push(startReplicate(db, replica));
        await runs[1].waitForLog(/^replicating$/);
        await sleep(between(rand, 300, 600));
        const done = await writer.finish();
        assert.equal(await runs[1].terminate(), 0, runs[1].stderr);

        const [gen, ...more] = await assertContiguous(replica);
        assert.equal(more.length, 0, "one generation");
        const heal = Number(runs[1].log.find(isHealLine)?.fields.txid);
        assert.ok(heal > gen.firstTxid, `the restart healed; stderr:\n${runs[1].stderr}`);
        const heals = await replicaHeals(replica, [gen]);
        assert.ok(heals.includes(heal), "the logged heal is in the replica");
        const out = path.join(dir, "out.db");
        await restoreTo(replica, out);
        assertSameFile(out, db, `the latest restore ${why}`);
        assert.equal((await workloadState(out)).k, done.commits);

        // Every txid from 12 before the heal to 12 after, and random others.
        const sideRows = readSideFile(side);
        const near = Array.from({ length: 25 }, (_, i) => heal - 12 + i);
        const checked = await checkTxids(replica, [gen], rand, dir, { perGeneration: 4, txids: near, heals, side: sideRows });
        const kOf = new Map(checked.map((c) => [c.txid, c.k]));
        assert.ok(kOf.get(heal)! > kOf.get(heal - 1)!, "the heal brought commits that went by while walship was down");

        // Instants: the heal's observed time, a millisecond either side, and random ones within 2 s of it.
        const { snapshots, segments } = await listGeneration(replica.storage, gen.generation);
        const healSegment = segments.find((s) => s.firstTxid === heal)!;
        assert.equal(healSegment.lastTxid, heal, "the heal is an object of its own");
        const healTime = healSegment.firstTime;
        const instants = [healTime - 1, healTime, healTime + 1];
        for (let i = 0; i < 8; i++) instants.push(healTime - 2000 + between(rand, 0, 4000));
        const sideTimes = readSideTimes(side);
        let prev = { t: -Infinity, k: -1 };
        for (const t of instants.sort((a, b) => a - b)) {
          let r;
          try {
            r = await restoreTo(replica, out, { timestamp: t });
          } catch (err) {
            // Before the snapshot was observed there is nothing to restore, and it must say so.
            assert.ok(t < snapshots[0].time && /holds no state at or before/.test(String(err)), String(err));
            continue;
          }
          const { k, rows } = await workloadState(out);
          const what = `the restore at ${new Date(t).toISOString()} (txid ${r.txid}, commit ${k}) ${why}`;
          assert.equal(rows, k === 0 ? 0 : sideRows.get(k), `${what}: a state the writer recorded`);
          assert.ok(k === 0 || sideTimes.get(k)! <= t, `${what}: that commit began after the instant`);
          assert.ok(r.time <= t, `${what} was observed at ${r.time}, after the instant`);
          assert.ok(k >= prev.k, `${what} is earlier than the one at ${prev.t}`);
          if (kOf.has(r.txid)) assert.equal(k, kOf.get(r.txid), `${what}: the same state as by txid`);
          if (r.txid < gen.lastTxid) {
            const next = await restoreTo(replica, path.join(dir, "next.db"), { txid: r.txid + 1 });
            assert.ok(next.time > t, `${what}: txid ${r.txid + 1}, observed at ${next.time}, is not after the instant`);
          }
          if (t === healTime - 1) assert.equal(r.txid, heal - 1, "just before the heal was observed: the txid before it");
          if (t === healTime) assert.ok(r.txid >= heal, "at the heal's time: the heal or later");
          prev = { t, k };
        }
      } finally {
        for (const p of runs) p.signal("SIGKILL");
        await writer.close().catch(() => writer.dispose());
      }
    }), { timeout: 120_000 });
}

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
