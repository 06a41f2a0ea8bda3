/**
 * Several replicas per database (issue #5): each keeps its own position. An
 * S3 replica that goes down falls behind while a directory replica keeps up;
 * it catches up when the server is back; both restore the same data. A
 * replica added later gets a fresh generation (it lacks the history); one
 * removed is forgotten without holding the cache back.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { openReplica } from "../src/replica/open_replica.ts";
import { Replicator } from "../src/replicate/replicator.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { test } from "./_runtime.ts";
import { startS3Server } from "./_s3_server.ts";
import { dumpLive, openRuntimeWriter, recordingLog, runtimeTransaction, testSeed } from "./_replication_fixtures.ts";
import { prng, waitFor, withTempDir } from "./_util.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";

async function restoredDump(storage: ReplicaStorage, output: string): Promise<{ dump: string; generation: string; txid: number }> {
  const r = await restoreDatabase({ storage, output, target: {}, force: true });
  return { dump: await dumpLive(output), generation: r.generation, txid: r.txid };
}

test("two replicas keep their own positions: S3 down falls behind, the directory keeps up, both restore the same", async () => {
  const seed = testSeed();
  const s3 = await startS3Server({ buckets: ["multi"] });
  try {
    await withTempDir("multi", async (dir) => {
      const db = path.join(dir, "app.db");
      const cacheDir = path.join(dir, "cache");
      const s3Url = s3.url("multi", "app");
      const dirA = pathToFileURL(path.join(dir, "a")).href;
      const dirB = pathToFileURL(path.join(dir, "b")).href;
      const open = (url: string) => openReplica(url, { env: s3.env });
      const con = await openRuntimeWriter(db);
      const rand = prng(seed);
      const log = recordingLog();
      const make = (urls: string[]) =>
        new Replicator(db, {
          storage: urls.map(open),
          cacheDir,
          syncInterval: 50,
          retry: { initialMs: 50, maxMs: 300, warnEveryMs: 60_000 },
          log,
        });
      let k = 0;
      const write = (n: number) => {
        for (let i = 0; i < n; i++) runtimeTransaction(con, rand, ++k, []);
      };
      try {
        let r = make([s3Url, dirA]);
        await r.start();
        write(20);
        await r.flush();
        let st = r.status();
        assert.equal(st.replicas.length, 2);
        for (const rep of st.replicas) assert.equal(rep.uploadedTxid, st.txid, `${rep.replica} caught up (seed ${seed})`);
        const generation = st.generation;

        // Outage of the S3 replica only.
        await s3.stop();
        write(30);
        const target = st.txid + 30;
        await waitFor("the directory replica to keep up", () => r.status().replicas[1].uploadedTxid === target);
        await waitFor("an S3 upload error", () => r.status().replicas[0].lastError);
        st = r.status();
        const [s3Status, dirStatus] = st.replicas;
        assert.ok(s3Status.uploadedTxid < st.txid, `S3 is behind: ${s3Status.uploadedTxid} < ${st.txid}`);
        assert.ok(s3Status.pendingObjects > 0 && s3Status.lastError, "S3's objects wait in the cache, with its error");
        assert.ok(s3Status.lagSeconds > 0, "S3 lags");
        assert.equal(dirStatus.pendingObjects, 0);
        assert.equal(dirStatus.lagSeconds, 0);
        assert.equal(st.uploadedTxid, s3Status.uploadedTxid, "the overall position is the slowest replica's");
        const live = await dumpLive(db);
        const fromDir = await restoredDump(open(dirA), path.join(dir, "from-a.db"));
        assert.equal(fromDir.txid, st.txid);
        assert.equal(fromDir.dump, live, "the directory replica restores the live state during the S3 outage");

        await s3.start();
        await r.flush();
        st = r.status();
        assert.equal(st.replicas[0].uploadedTxid, st.txid, "S3 caught up after the outage");
        assert.equal(st.pendingObjects, 0);
        const fromS3 = await restoredDump(open(s3Url), path.join(dir, "from-s3.db"));
        assert.deepEqual({ ...fromS3, dump: fromS3.dump === live }, { generation, txid: st.txid, dump: true });
        assert.equal((await r.stop()).pendingObjects, 0);

        // A replica added later lacks the history: a new generation, which every replica gets.
        write(5);
        r = make([s3Url, dirA, dirB]);
        await r.start();
        write(5);
        await r.flush();
        st = r.status();
        assert.notEqual(st.generation, generation, "adding a replica starts a new generation");
        assert.ok(log.lines.some((l) => l.level === "warn" && l.message.includes(`replica ${openReplica(dirB).location} was added`)));
        const now = await dumpLive(db);
        for (const url of [s3Url, dirA, dirB]) {
          const got = await restoredDump(open(url), path.join(dir, "again.db"));
          assert.deepEqual({ generation: got.generation, txid: got.txid, same: got.dump === now }, {
            generation: st.generation,
            txid: st.txid,
            same: true,
          }, url);
        }
        await r.stop();

        // A replica removed is forgotten; the others resume in the same generation.
        const kept = st.generation;
        await s3.stop();
        write(3);
        r = make([dirA]);
        await r.start();
        write(3);
        await r.flush();
        st = r.status();
        assert.equal(st.generation, kept, "removing a replica does not need a new generation");
        assert.equal(st.pendingObjects, 0, "nothing waits for the removed replica");
        assert.deepEqual(fs.readdirSync(path.join(cacheDir, "objects")), [], "its cached objects were freed");
        assert.equal((await restoredDump(open(dirA), path.join(dir, "last.db"))).dump, await dumpLive(db));
        await r.stop();
      } finally {
        con.close();
      }
    });
  } finally {
    await s3.close();
  }
});

test("the same replica twice is refused with one line", () => {
  const url = pathToFileURL("/tmp/walship-twice").href;
  assert.throws(() => new Replicator("x.db", { storage: [openReplica(url), openReplica(url)] }), {
    message: `replica ${url} is given twice for ${path.resolve("x.db")}`,
  });
});
