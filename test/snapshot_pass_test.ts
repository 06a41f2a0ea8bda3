/**
 * One pass over a snapshot image: the page table a snapshot needs is filled
 * from the same reads that feed the compressor (writeSnapshotObject's
 * `table`), and the image is copied by the kernel without an fsync.
 *
 * - The table filled while the object is written equals tableFromImage of
 *   the same image, page by page and as saved, at page sizes whose runs of
 *   about 1 MiB end inside the database (512, 4096, 65536); the object
 *   restores that image byte for byte, and its rows are the live database's.
 * - An image short of its pages is refused, not shipped; a table of another
 *   page size is refused.
 * - Without a WAL the image is the database file byte for byte, and it is
 *   the process's own file (0600) whatever the database's mode.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { PageTable } from "../src/cache/page_table.ts";
import { captureImage } from "../src/capture/snapshot_reader.ts";
import { WalFollower } from "../src/capture/wal_follower.ts";
import { WalshipError } from "../src/errors.ts";
import { newGenerationId, snapshotKey } from "../src/replica/layout.ts";
import { encodeObject, type SnapshotMeta } from "../src/replica/object_format.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { ZstdStreamEncoder } from "../src/replica/zstd.ts";
import { tableFromImage } from "../src/replicate/page_table_sync.ts";
import { writeSnapshotObject } from "../src/replicate/snapshot_object.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { openSqlite, type SqliteConnection, test } from "./_runtime.ts";
import {
  assertSameFile,
  checkpoint,
  dumpFile,
  dumpLive,
  integrityCheck,
  runtimeTransaction,
  testSeed,
} from "./_replication_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

/** A WAL database of `pageSize`-byte pages with the workload's tables, some pages checkpointed, some only in the WAL. */
async function liveDatabase(db: string, pageSize: number, seed: number): Promise<SqliteConnection> {
  const con = await openSqlite(db);
  con.exec(`PRAGMA page_size=${pageSize}`);
  assert.equal(con.all<{ journal_mode: string }>("PRAGMA journal_mode=WAL")[0].journal_mode, "wal");
  con.exec("PRAGMA wal_autocheckpoint=0");
  con.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)");
  con.exec("CREATE TABLE log(seq INTEGER PRIMARY KEY, rows INTEGER NOT NULL)");
  con.exec("CREATE TABLE bulk(id INTEGER PRIMARY KEY, body TEXT, data BLOB)");
  // About 3 MiB of rows, half text and half random: several runs of about 1 MiB at any page size.
  con.exec(`WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000)
    INSERT INTO bulk(body, data) SELECT printf('row %d ', x) || hex(zeroblob(700)), randomblob(1500) FROM n`);
  con.exec("INSERT INTO log VALUES (0, 0)");
  const rand = prng(seed);
  for (let k = 1; k <= 40; k++) runtimeTransaction(con, rand, k, []);
  checkpoint(con, "TRUNCATE");
  for (let k = 41; k <= 80; k++) runtimeTransaction(con, rand, k, []);
  con.exec("UPDATE bulk SET data = randomblob(1500) WHERE id % 7 = 0");
  // The image must end inside a run of pages (the short last run is what is tested):
  // about one seed in 16 ends on a run's edge at 64 KiB pages, so grow it by a row.
  const runPages = Math.max(1, (1 << 20) / pageSize);
  const pages = () => con.all<{ page_count: number }>("PRAGMA page_count")[0].page_count;
  while (pages() % runPages === 0) con.exec(`INSERT INTO bulk(body, data) VALUES ('pad', randomblob(${pageSize}))`);
  return con;
}

function snapshotMeta(generation: string, pageSize: number, dbSize: number, time: number): SnapshotMeta {
  return { kind: "snapshot", generation, pageSize, txid: 1, time, position: null, bigEndian: false, dbSize };
}

for (const pageSize of [512, 4096, 65536]) {
  const name = `${pageSize}-byte pages: the table filled while the object is written is tableFromImage's; ` +
    "the object restores the image exactly";
  test(name, () =>
    withTempDir("snapshot-pass", async (dir) => {
      const seed = testSeed();
      const db = path.join(dir, "app.db");
      const con = await liveDatabase(db, pageSize, seed);
      try {
        assert.ok(fs.statSync(`${db}-wal`).size > 0, "part of the state is only in the WAL");
        const follower = new WalFollower(db, null);
        follower.rebase(null, 0, 0);
        const image = await captureImage(db, follower, path.join(dir, "image"), { baseline: true, onPoll: () => {} });
        follower.close();
        assert.equal(image.pageSize, pageSize);
        const runPages = Math.max(1, (1 << 20) / pageSize);
        assert.ok(
          image.dbSize > 2 * runPages && image.dbSize % runPages !== 0,
          `seed ${seed}: ${image.dbSize} pages end inside a run`,
        );

        const generation = newGenerationId();
        const time = Date.now();
        const meta: SnapshotMeta = {
          ...snapshotMeta(generation, pageSize, image.dbSize, time),
          position: image.position,
          bigEndian: image.bigEndian,
        };
        const table = new PageTable(pageSize, generation, 1);
        const objectPath = path.join(dir, "object");
        const progress: number[] = [];
        const hash = await writeSnapshotObject(image.path, meta, objectPath, {
          table,
          onProgress: (done) => void progress.push(done),
        });

        // Page by page, and as saved: the same table as a separate pass over the image.
        const expected = await tableFromImage(image.path, pageSize, image.dbSize, generation, 1);
        assert.equal(table.count, image.dbSize);
        assert.equal(expected.count, image.dbSize);
        const bytes = fs.readFileSync(image.path);
        assert.equal(bytes.length, image.dbSize * pageSize);
        for (let pgno = 1; pgno <= image.dbSize; pgno++) {
          const page = bytes.subarray((pgno - 1) * pageSize, pgno * pageSize);
          assert.ok(table.matches(pgno, page), `seed ${seed}: page ${pgno} of ${image.dbSize}`);
          assert.ok(expected.matches(pgno, page));
        }
        assert.ok(!table.matches(image.dbSize + 1, new Uint8Array(pageSize)), "no page past dbSize");
        table.save(path.join(dir, "merged.pages"));
        expected.save(path.join(dir, "separate.pages"));
        assertSameFile(path.join(dir, "merged.pages"), path.join(dir, "separate.pages"), "the saved page table");
        assert.equal(progress.at(-1), bytes.length);

        // The object: its trailer is the returned hash of everything before it.
        const object = fs.readFileSync(objectPath);
        assert.equal(createHash("sha256").update(object.subarray(0, object.length - 32)).digest("hex"), hash);
        assert.equal(object.subarray(object.length - 32).toString("hex"), hash);

        // Restored: the image byte for byte, and the rows the live database shows.
        const storage = openReplica(pathToFileURL(path.join(dir, "replica")).href);
        await storage.put(snapshotKey(generation, 1, time), object);
        const out = path.join(dir, "restored.db");
        const r = await restoreDatabase({ storage, output: out });
        assert.equal(r.pages, image.dbSize);
        assertSameFile(out, image.path, "the restored snapshot");
        assert.equal(await integrityCheck(out), "ok");
        assert.equal(await dumpFile(out), await dumpLive(db), `seed ${seed}: the restored rows are the live database's`);

        // The frame records the image's size; a frame without it (as before
        // session 11) restores the same image.
        const payloadAt = 16 + object.readUInt32BE(12);
        assert.notEqual(object[payloadAt + 4] >> 6, 0, "the frame header records its content size");
        const unpledged = new ZstdStreamEncoder();
        const kept: Uint8Array[] = []; // copied as they come: the encoder reuses its buffers
        for (let at = 0; at < bytes.length; at += 65536) {
          for (const v of unpledged.push(bytes.subarray(at, at + 65536))) kept.push(v.slice());
        }
        for (const v of unpledged.end()) kept.push(v.slice());
        unpledged.close();
        const frame = Buffer.concat(kept);
        assert.equal(frame[4] >> 6, 0, "no content size in this frame");
        const legacy = { ...meta, txid: 2, time: time + 1 };
        await storage.put(snapshotKey(generation, 2, legacy.time), encodeObject(legacy, frame).bytes);
        const out2 = path.join(dir, "restored-unpledged.db");
        const r2 = await restoreDatabase({ storage, output: out2 });
        assert.equal(r2.txid, 2, "restored from the snapshot whose frame leaves out its size");
        assert.equal(r2.pages, image.dbSize);
        assertSameFile(out2, image.path, "the snapshot whose frame leaves out its size");
      } finally {
        con.close();
      }
    }));
}

test("an image short of its pages is refused; so is a page table of another page size", () =>
  withTempDir("snapshot-pass-short", async (dir) => {
    const image = path.join(dir, "image");
    fs.writeFileSync(image, new Uint8Array(10 * 4096).fill(7));
    const generation = newGenerationId();
    const isShort = (err: unknown) =>
      err instanceof WalshipError && err.code === "IO" && /ends at byte 40960, short of its 12 pages/.test(err.message);
    await assert.rejects(
      writeSnapshotObject(image, snapshotMeta(generation, 4096, 12, Date.now()), path.join(dir, "o1"), {
        table: new PageTable(4096, generation, 1),
      }),
      isShort,
    );
    await assert.rejects(tableFromImage(image, 4096, 12, generation, 1), isShort);
    await assert.rejects(
      writeSnapshotObject(image, snapshotMeta(generation, 4096, 10, Date.now()), path.join(dir, "o2"), {
        table: new PageTable(1024, generation, 1),
      }),
      (err: unknown) => err instanceof WalshipError && err.code === "BAD_ARGUMENT" && /1024-byte pages/.test(err.message),
    );
    // Pages past dbSize are not the snapshot's: a longer image gives the first dbSize pages.
    const table = new PageTable(4096, generation, 1);
    await writeSnapshotObject(image, snapshotMeta(generation, 4096, 6, Date.now()), path.join(dir, "o3"), { table });
    assert.equal(table.count, 6);
  }));

test("a failure while the object is written stops the image's reader (its file is closed) and is thrown", () =>
  withTempDir("snapshot-pass-stop", async (dir) => {
    const chunk = new Uint8Array(16 * 4096).fill(3);
    let yielded = 0;
    let closed = false;
    async function* image() {
      try {
        for (let first = 1; first <= 64; first += 16) {
          yielded++;
          yield { first, chunk };
        }
      } finally {
        closed = true;
      }
    }
    const boom = new WalshipError("IO", "the progress callback failed");
    await assert.rejects(
      writeSnapshotObject(image(), snapshotMeta(newGenerationId(), 4096, 64, Date.now()), path.join(dir, "o"), {
        onProgress: (done) => {
          if (done === 2 * chunk.length) throw boom;
        },
      }),
      (err: unknown) => err === boom,
    );
    assert.ok(closed, "the reader's finally ran");
    assert.ok(yielded < 4, `reading stopped early (${yielded} of 4 chunks)`);
  }));

test("without a WAL the image is the database file byte for byte, and it is ours alone (0600)", () =>
  withTempDir("snapshot-pass-copy", async (dir) => {
    const db = path.join(dir, "app.db");
    const con = await liveDatabase(db, 4096, testSeed());
    con.close(); // the last connection checkpoints and deletes the WAL
    assert.ok(!fs.existsSync(`${db}-wal`));
    fs.chmodSync(db, 0o444);
    const follower = new WalFollower(db, null);
    follower.rebase(null, 0, 0);
    const target = path.join(dir, "image");
    const image = await captureImage(db, follower, target, { baseline: true, onPoll: () => {} });
    follower.close();
    assert.equal(image.position, null);
    assertSameFile(target, db, "the image");
    assert.equal(fs.statSync(target).mode & 0o777, 0o600);
  }));
