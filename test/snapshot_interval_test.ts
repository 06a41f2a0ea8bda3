/**
 * Periodic snapshots (`snapshotInterval`) within a generation, taken while a
 * writer keeps committing: each one must be a consistent image (invariant 3).
 * Snapshots read the database in place; with the writer checkpointing every
 * 20 pages as well, checkpoints run while they are read, and without the pin
 * they run past the frames read (the read is then proven wrong and done
 * again).
 * The proof: the state a later snapshot holds at txid S equals, byte for
 * byte, the state rebuilt from the generation's first snapshot plus every
 * segment up to S.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { Replicator } from "../src/replicate/replicator.ts";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import { test } from "./_runtime.ts";
import {
  assertSameFile,
  BACKENDS,
  type BackendName,
  closeSharedS3,
  freshReplica,
  integrityCheck,
  openRuntimeWriter,
  restoreTo,
  runtimeTransaction,
  testSeed,
} from "./_replication_fixtures.ts";
import { prng, sleep, withTempDir } from "./_util.ts";

for (const backend of BACKENDS) {
  for (const [autocheckpoint, pin] of [[0, true], [20, true], [20, false]] as const) {
    const writes = autocheckpoint === 0 ? "" : `, with a checkpoint every ${autocheckpoint} pages${pin ? "" : ", unpinned"},`;
    test(`${backend}: periodic snapshots taken during writes${writes} are consistent images of their txid`, () =>
      snapshotsDuringWrites(backend, autocheckpoint, pin));
  }
}

function snapshotsDuringWrites(backend: BackendName, autocheckpoint: number, pin: boolean): Promise<void> {
  return withTempDir("snapshot-interval", async (dir) => {
    const replica = await freshReplica(backend, dir);
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db, [`PRAGMA wal_autocheckpoint=${autocheckpoint}`]);
    const rand = prng(testSeed());
    const r = new Replicator(db, {
      storage: replica.storage,
      cacheDir: path.join(dir, "cache"),
      syncInterval: 20,
      snapshotInterval: 250,
      pin,
    });
    let taken = 0;
    r.on((e) => void (e.type === "snapshot" && taken++));
    await r.start();
    // At least 150 commits, and on until three periodic snapshots were taken during them.
    for (let k = 1; k <= 150 || (taken < 4 && k <= 3000); k++) {
      runtimeTransaction(con, rand, k, []);
      if (k % 3 === 0) await sleep(10); // let the replicator run between commits
    }
    await r.flush();
    await r.stop();
    con.all("PRAGMA wal_checkpoint(TRUNCATE)");
    con.close();

    const generations = await listGenerations(replica.storage);
    assert.equal(generations.length, 1, "one generation: periodic snapshots stay in it");
    const { snapshots, segments } = await listGeneration(replica.storage, generations[0]);
    assert.ok(snapshots.length >= 3, `several snapshots, got ${snapshots.length}`);
    for (let i = 1; i < snapshots.length; i++) assert.ok(snapshots[i].txid > snapshots[i - 1].txid);
    const last = segments.at(-1)!.lastTxid;

    // The latest state restores from the latest snapshot and equals the source.
    const latest = path.join(dir, "latest.db");
    const res = await restoreTo(replica, latest);
    assert.equal(res.txid, last);
    assertSameFile(latest, db);

    // Each later snapshot, read directly, equals first snapshot + segments up to its txid.
    for (const snap of snapshots.slice(1)) {
      const direct = path.join(dir, `direct-${snap.txid}.db`);
      await restoreTo(replica, direct, { txid: snap.txid });
      assert.equal(await integrityCheck(direct), "ok");
      fs.renameSync(direct, `${direct}.kept`);
    }
    // Now remove every snapshot but the first: the same txids rebuild from segments.
    await replica.storage.delete(snapshots.slice(1).map((s) => s.key));
    for (const snap of snapshots.slice(1)) {
      const rebuilt = path.join(dir, `rebuilt-${snap.txid}.db`);
      await restoreTo(replica, rebuilt, { txid: snap.txid });
      assertSameFile(path.join(dir, `direct-${snap.txid}.db.kept`), rebuilt, `snapshot at txid ${snap.txid}`);
    }
  });
}

test("close the shared S3 server", () => closeSharedS3());
