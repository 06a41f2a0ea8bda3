/**
 * One upload per sync interval (DESIGN.md, "Storage and cost") under a
 * writer that never pauses: pinned walship, a Python process committing
 * back to back with SQLite's default autocheckpoint, a 1 s sync interval.
 * The segments stored may number at most one per second the run lasted,
 * plus the shutdown flush and one for a partial first interval, and the
 * replica still restores exactly the source, with no heal. (Before the
 * read-mark pin, this writer made walship cut a segment every ~10 ms.)
 */

import assert from "node:assert/strict";
import path from "node:path";
import { test } from "./_runtime.ts";
import { StormWriter } from "./_pin_fixtures.ts";
import { assertContiguous, assertSameFile, freshReplica, restoreTo, startReplicate, testSeed } from "./_replication_fixtures.ts";
import { withTempDir } from "./_util.ts";

test("file: a writer that never pauses gets at most one segment per sync interval, and the replica is exact", () =>
  withTempDir("sync-puts", async (dir) => {
    const replica = await freshReplica("file", dir);
    const db = path.join(dir, "app.db");
    const writer = await StormWriter.start(db, {
      seed: testSeed(),
      transactions: 4000,
      truncateEvery: 0,
      autocheckpoint: 1000,
    });
    const p = startReplicate(db, replica, { syncInterval: "1s" });
    try {
      await p.waitForLog(/^replicating$/);
      const t0 = Date.now();
      writer.go();
      const storm = await writer.done();
      assert.equal(storm.commits.length, 4000);
      assert.deepEqual(storm.final.result, [0, 0, 0], "the final TRUNCATE checkpoint went through");
      assert.equal(await p.terminate(), 0, p.stderr);
      const seconds = (Date.now() - t0) / 1000;
      const lost = p.log.filter((l) => /heal|repair|continuity lost|new generation/i.test(l.message)).map((l) => l.message);
      assert.deepEqual(lost, []);
      const gens = await assertContiguous(replica);
      assert.equal(gens.length, 1);
      const segments = gens[0].segments.length;
      assert.ok(
        segments <= Math.ceil(seconds) + 2,
        `${segments} segments in ${seconds.toFixed(1)} s at a 1 s sync interval`,
      );
      const latest = path.join(dir, "latest.db");
      await restoreTo(replica, latest);
      assertSameFile(latest, db);
    } finally {
      p.signal("SIGKILL");
      await writer.close().catch(() => writer.dispose());
    }
  }));
