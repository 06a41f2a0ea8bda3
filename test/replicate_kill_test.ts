/**
 * `walship replicate` as a real subprocess, SIGKILLed at random moments and
 * started again four times while a separate Python process keeps
 * committing, on both backends. While walship is down the writer
 * checkpoints with TRUNCATE, so the WAL starts over and walship cannot
 * resume where it was: every restart heals (ships the pages that differ, as
 * one txid of the same generation) instead of starting a new generation. At
 * the end SIGTERM ships everything and exits 0; the latest restore is the
 * source byte for byte; txids are contiguous; random txids, and those on both
 * sides of every heal, restore to whole states the writer recorded, never
 * going back as the txid grows, one commit per txid except at a heal.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { test } from "./_runtime.ts";
import {
  assertContiguous,
  assertSameFile,
  BACKENDS,
  checkTxids,
  cliGenerations,
  cliRestore,
  closeSharedS3,
  freshReplica,
  integrityCheck,
  type LogLine,
  PythonWriter,
  readSideFile,
  replicaHeals,
  startReplicate,
  testSeed,
  type WalshipProcess,
  workloadState,
} from "./_replication_fixtures.ts";
import { between, prng, sleep, withTempDir } from "./_util.ts";

for (const backend of BACKENDS) {
  test(`${backend}: replicate SIGKILLed four times under a live writer loses nothing and every txid restores`, () =>
    withTempDir("kill", async (dir) => {
      const seed = testSeed();
      const rand = prng(seed);
      const why = `(seed ${seed}, WALSHIP_TEST_SEED reproduces the schedule)`;
      const replica = await freshReplica(backend, dir);
      const db = path.join(dir, "app.db");
      const side = path.join(dir, "side.txt");
      const writer = await PythonWriter.start(db, { seed, side, sleepMs: [2, 8], schemaChanges: true });
      const runs: WalshipProcess[] = [];
      try {
        runs.push(startReplicate(db, replica));
        await runs[0].waitForLog(/^replicating$/);
        const kills: number[] = [];
        for (let i = 0; i < 4; i++) {
          const after = between(rand, 200, 1200);
          await sleep(after);
          await runs.at(-1)!.kill();
          kills.push(after);
          // While walship is down the WAL starts over: its position is gone.
          const [busy] = await writer.truncate();
          assert.equal(busy, 0, "nothing held the WAL while walship was down");
          await sleep(between(rand, 0, 400)); // the writer goes on meanwhile
          runs.push(startReplicate(db, replica));
        }
        const last = runs.at(-1)!;
        await last.waitForLog(/^replicating$/);
        await sleep(300);
        const done = await writer.finish();
        assert.equal(done.checkpoint?.[0], 0, "the final TRUNCATE checkpoint was not blocked");
        assert.ok(done.commits >= 150, `the writer kept committing throughout: ${done.commits} commits`);

        assert.equal(await last.terminate(), 0, `SIGTERM exits 0; stderr:\n${last.stderr}`);
        const stopped = last.log.find((l) => l.message === "stopped");
        assert.ok(stopped, "the last line says it stopped");
        assert.equal(stopped.fields.uploadedTxid, stopped.fields.txid, "SIGTERM shipped everything captured");

        const latest = path.join(dir, "latest.db");
        const r = await cliRestore(replica, latest);
        assertSameFile(latest, db, `restored database ${why}`);
        assert.equal(await integrityCheck(latest), "ok");
        assert.equal((await workloadState(latest)).k, done.commits);

        const gens = await assertContiguous(replica);
        const listed = await cliGenerations(replica);
        assert.deepEqual(
          listed.map((g) => [g.generation, g.firstTxid, g.lastTxid]),
          gens.map((g) => [g.generation, g.firstTxid, g.lastTxid]),
          "walship generations --json agrees with the listing",
        );
        assert.equal(r.txid, gens.at(-1)!.lastTxid);
        assert.equal(r.generation, gens.at(-1)!.generation);
        assert.equal(stopped.fields.txid, r.txid);

        // Every restart that got going found the WAL restarted under its
        // position, and healed at warn level with the reason, within the one generation.
        const isHeal = (l: LogLine) => l.level === "warn" && /healed/.test(l.message);
        for (const [i, p] of runs.entries()) {
          if (i === 0 || !p.log.some((l) => l.message === "replicating")) continue;
          const heal = p.log.find(isHeal);
          assert.ok(heal, `restart ${i} did not heal ${why}; stderr:\n${p.stderr}`);
          assert.match(heal.message, /no longer holds the last replicated position/);
          assert.equal(heal.fields.generation, gens[0].generation);
        }
        const lines = runs.flatMap((p) => p.log);
        const logged = lines.filter(isHeal).map((l) => Number(l.fields.txid));
        assert.ok(logged.length >= 1, "at least one restart healed");
        // A run killed right after shipping a heal never logged it: the replica knows them all.
        const heals = await replicaHeals(replica, gens);
        for (const h of logged) assert.ok(heals.includes(h), `the heal logged at txid ${h} is in the replica`);
        assert.deepEqual(lines.filter((l) => /new generation/.test(l.message)), [], "no restart started a new generation");
        assert.equal(gens.length, 1, `one generation throughout ${why}`);
        const snap = lines.find((l) => l.message === "snapshot taken" && l.fields.generation === gens[0].generation);
        assert.ok(snap && typeof snap.fields.reason === "string" && snap.fields.reason.length > 0, "the snapshot's reason is logged");

        const sideRows = readSideFile(side);
        assert.equal(sideRows.get(done.commits), done.rows);
        const checked = await checkTxids(replica, gens, rand, dir, {
          perGeneration: 3,
          txids: heals.flatMap((h) => [h - 1, h]),
          heals,
          side: sideRows,
        });
        assert.ok(checked.length >= 1 + heals.length);

        // And one earlier txid through the CLI's --txid.
        const pick = checked[between(rand, 0, checked.length - 1)];
        const viaCli = path.join(dir, "via-cli.db");
        const c = await cliRestore(replica, viaCli, ["--txid", String(pick.txid)]);
        assert.equal(c.txid, pick.txid);
        assert.equal(await integrityCheck(viaCli), "ok");
        assert.equal((await workloadState(viaCli)).k, pick.k);
      } finally {
        for (const p of runs) p.signal("SIGKILL");
        await writer.close().catch(() => writer.dispose());
      }
    }), { timeout: 120_000 });
}

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
