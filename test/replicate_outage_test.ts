/**
 * A real S3 outage in the middle of writing: the s3rver process is killed
 * for 10 s while `walship replicate` (a subprocess) keeps capturing what a
 * Python writer commits. walship says so once, at warn level, naming the
 * replica; the objects wait in its local cache; when the server is back they
 * drain in journal order, the replica's txids have no gap, and the latest
 * restore is the source byte for byte. S3 only: a directory has no outage.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "./_runtime.ts";
import { startS3Server } from "./_s3_server.ts";
import {
  assertContiguous,
  assertSameFile,
  freshReplica,
  integrityCheck,
  PythonWriter,
  restoreTo,
  startReplicate,
  testSeed,
  type WalshipProcess,
  workloadState,
} from "./_replication_fixtures.ts";
import { sleep, waitFor, withTempDir } from "./_util.ts";

const OUTAGE_MS = 10_000;

/** Objects waiting in a cache directory for upload. */
function waiting(cacheDir: string): number {
  try {
    return fs.readdirSync(path.join(cacheDir, "objects")).filter((n) => /^[0-9a-f]{64}$/.test(n)).length;
  } catch {
    return 0;
  }
}

test("s3: a 10 s outage mid-write is logged once, buffered in the cache, drained in order, and loses nothing", () =>
  withTempDir("outage", async (dir) => {
    const seed = testSeed();
    const server = await startS3Server();
    const db = path.join(dir, "app.db");
    const cacheDir = path.join(dir, "cache");
    let writer: PythonWriter | undefined;
    let p: WalshipProcess | undefined;
    try {
      const replica = await freshReplica("s3", dir, server);
      writer = await PythonWriter.start(db, { seed, sleepMs: [5, 15], schemaChanges: true });
      p = startReplicate(db, replica, { cacheDir });
      await p.waitForLog(/^replicating$/);
      const before = await waitFor("a first segment in the replica", async () => {
        const gens = await assertContiguous(replica).catch(() => null); // empty until the snapshot lands
        return gens && gens.at(-1)!.segments.length > 0 ? gens : null;
      });

      await server.stop();
      const down = Date.now();
      const warning = await p.waitForLog(/upload failed/, OUTAGE_MS);
      assert.equal(warning.level, "warn");
      assert.match(warning.message, /will retry; objects wait in the local cache/);
      assert.equal(warning.fields.replica, replica.storage.location);
      await waitFor("objects piling up in the cache", () => waiting(cacheDir) >= 5, OUTAGE_MS);
      const commitsDuringOutage = writer.commits;
      await sleep(down + OUTAGE_MS - Date.now());
      assert.ok(writer.commits > commitsDuringOutage, "the writer kept committing during the outage");
      const piled = waiting(cacheDir);
      assert.ok(piled >= 20, `a 100 ms sync interval piles up objects during a 10 s outage, got ${piled}`);

      await server.start();
      const back = await p.waitForLog(/replica reachable again/, 20_000);
      const waited = Number(/after ([\d.]+)s/.exec(back.message)?.[1]);
      assert.ok(waited >= OUTAGE_MS / 1000 - 0.5, `the outage lasted ${waited}s by walship's count`);
      await waitFor("the cache to drain", () => waiting(cacheDir) === 0, 20_000);
      await sleep(300);
      const done = await writer.finish();
      assert.equal(done.checkpoint?.[0], 0);
      assert.equal(await p.terminate(), 0, `SIGTERM exits 0; stderr:\n${p.stderr}`);

      // One warning for the whole outage, not one per retry.
      const uploadWarnings = p.log.filter((l) => /upload failed/.test(l.message));
      assert.equal(uploadWarnings.length, 1, uploadWarnings.map((l) => l.message).join("\n"));

      // The journal: every object recorded was uploaded, in the order recorded.
      const journal = fs.readFileSync(path.join(cacheDir, "journal"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
      const recorded = journal.filter((r) => r.t === "object");
      const uploaded = journal.filter((r) => r.t === "uploaded").map((r) => r.seq);
      assert.deepEqual(uploaded, recorded.map((r) => r.seq), "uploads follow the journal order, all of them");
      const txids = recorded.map((r) => r.txid);
      assert.deepEqual(txids, [...txids].sort((a, b) => a - b), "txids grow along the journal");

      const gens = await assertContiguous(replica);
      assert.ok(gens.at(-1)!.lastTxid > before.at(-1)!.lastTxid + piled);
      const generationWarnings = p.log.filter((l) => l.level === "warn" && /new generation/.test(l.message));
      assert.equal(gens.length - 1, generationWarnings.length, "a new generation only with a logged reason");

      const latest = path.join(dir, "latest.db");
      const r = await restoreTo(replica, latest);
      assert.equal(r.txid, gens.at(-1)!.lastTxid);
      assertSameFile(latest, db, `restored database (seed ${seed})`);
      assert.equal(await integrityCheck(latest), "ok");
      assert.equal((await workloadState(latest)).k, done.commits);
    } finally {
      p?.signal("SIGKILL");
      await writer?.close().catch(() => writer?.dispose());
      await server.close();
    }
  }), { timeout: 120_000 });
