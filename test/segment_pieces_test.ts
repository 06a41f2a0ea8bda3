/**
 * Segments in pieces (docs/FORMAT.md, format 2): a segment holding more than
 * PIECE_BYTES of records is compressed a piece at a time as it fills, so
 * walship never holds a sync interval's raw frames.
 *
 * - a big segment is written as format 2 with its pieces listed, its body
 *   is exactly the records' encoding, and a restore applies it exactly at
 *   every txid; a small one stays format 1, readable by older walships;
 * - pieces that do not add up, a piece that does not decompress, and a
 *   format this walship does not know are each refused as CORRUPT, by name;
 * - the page table, fed only the last version of each page of a segment
 *   (PageChanges), equals the table fed every frame in order, through
 *   shrinks, growth and the early hashing that bounds its memory;
 * - end to end, a real SQLite writer's blobs leave format-2 segments and
 *   the replica restores byte for byte.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { PageTable } from "../src/cache/page_table.ts";
import { WalshipError } from "../src/errors.ts";
import { newGenerationId, segmentKey, snapshotKey } from "../src/replica/layout.ts";
import { decodeObject, encodeObject, HASH_SIZE, type SegmentMeta } from "../src/replica/object_format.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { encodeSegmentBody, type SegmentRecord, streamSegmentBody } from "../src/replica/segment.ts";
import { ZstdChunkDecoder } from "../src/replica/zstd.ts";
import { PageChanges } from "../src/replicate/page_table_sync.ts";
import { Replicator } from "../src/replicate/replicator.ts";
import { PIECE_BYTES, SegmentBuilder, segmentBytes } from "../src/replicate/segment_builder.ts";
import { writeSnapshotObject } from "../src/replicate/snapshot_object.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import type { WalPosition } from "../src/sqlite/wal_scanner.ts";
import { assertSameFile, freshReplica, integrityCheck, recordingLog } from "./_replication_fixtures.ts";
import { test } from "./_runtime.ts";
import { commitFrame, sqlite3 } from "./_wal_fixtures.ts";
import { concatBytes } from "../src/bytes.ts";
import { prng, withTempDir } from "./_util.ts";

const PAGE = 4096;
const rand = prng(20261122);

function randomPage(): Uint8Array {
  const p = new Uint8Array(PAGE);
  const v = new DataView(p.buffer);
  for (let i = 0; i < PAGE; i += 4) v.setUint32(i, rand());
  return p;
}

function corrupt(pattern: RegExp): (err: unknown) => boolean {
  return (err) => err instanceof WalshipError && err.code === "CORRUPT" && pattern.test(err.message);
}

/** A replica holding a snapshot of `pages` at txid 1, and a builder that goes on from it. */
async function snapshotReplica(dir: string, pages: Uint8Array[]) {
  const storage = openReplica(pathToFileURL(path.join(dir, "replica")).href);
  const t0 = Date.UTC(2026, 10, 22);
  const generation = newGenerationId(t0 - 1000);
  const p0: WalPosition = { salt1: 5, salt2: 6, frame: 0, checksum1: 0x1111, checksum2: 0x2222 };
  const imagePath = path.join(dir, "image");
  fs.writeFileSync(imagePath, Buffer.concat(pages));
  const objectPath = path.join(dir, "snapshot");
  await writeSnapshotObject(imagePath, {
    kind: "snapshot",
    generation,
    pageSize: PAGE,
    txid: 1,
    time: t0,
    position: p0,
    bigEndian: false,
    dbSize: pages.length,
  }, objectPath);
  await storage.put(snapshotKey(generation, 1, t0), fs.readFileSync(objectPath));
  return { storage, t0, generation, p0 };
}

test("pieces: a segment of more than 4 MiB is format 2, its body is its records, and it restores exactly at every txid", () =>
  withTempDir("pieces", async (dir) => {
    const base = Array.from({ length: 16 }, randomPage);
    const { storage, t0, generation, p0 } = await snapshotReplica(dir, base);
    const builder = new SegmentBuilder(1, p0, base.length, false);
    const records: SegmentRecord[] = [];
    const states: Uint8Array[][] = [[], base.map((p) => p.slice())];
    let pos = p0;
    // 2.5 pieces of one-frame transactions: rewrites of the first pages, and growth.
    const count = Math.ceil((PIECE_BYTES * 2.5) / (PAGE + 24 + 17));
    for (let i = 0; i < count; i++) {
      const before = states.at(-1)!;
      const pgno = i % 3 === 0 ? before.length + 1 : 1 + (i % 16);
      const page = randomPage();
      const f = commitFrame(pos, pgno, Math.max(before.length, pgno), page, false, t0 + i);
      pos = f.pos;
      builder.add([f.tx], null);
      records.push({ tag: "transaction", firstFrame: f.tx.firstFrame, frameCount: 1, time: f.tx.time, frames: f.tx.frames });
      const after = before.slice();
      after[pgno - 1] = page;
      states.push(after);
    }
    const seg = builder.build(generation, PAGE);
    const segBytes = segmentBytes(seg);
    assert.equal(segBytes.length, seg.size);
    assert.equal(new DataView(segBytes.buffer, segBytes.byteOffset).getUint16(8), 2, "format 2 in the preamble");
    assert.ok((seg.meta.pieces?.length ?? 0) >= 3, `pieces: ${JSON.stringify(seg.meta.pieces)}`);
    const { meta, payload } = decodeObject(segBytes, "segment");
    assert.equal((meta as SegmentMeta).pieces?.length, seg.meta.pieces!.length, "the pieces travel in the metadata");
    const decoder = new ZstdChunkDecoder();
    // Each chunk copied as it comes: the decoder reuses its two buffers.
    const body = concatBytes(Array.from(streamSegmentBody(meta as SegmentMeta, payload, "segment", decoder), (c) => c.slice()));
    decoder.close();
    assert.ok(Buffer.from(body).equals(encodeSegmentBody(records)), "the pieces join into exactly the records' encoding");
    assert.deepEqual([seg.meta.firstTxid, seg.meta.lastTxid], [2, count + 1]);
    await storage.put(segmentKey(generation, seg.meta), segBytes);
    builder.commit();

    // A small segment after it stays format 1, with no pieces.
    const page = randomPage();
    const f = commitFrame(pos, 2, states.at(-1)!.length, page, false, t0 + count);
    builder.add([f.tx], null);
    const small = builder.build(generation, PAGE);
    const smallBytes = segmentBytes(small);
    assert.equal(new DataView(smallBytes.buffer, smallBytes.byteOffset).getUint16(8), 1);
    assert.equal(small.meta.pieces, undefined);
    await storage.put(segmentKey(generation, small.meta), smallBytes);
    const last = states.at(-1)!.slice();
    last[1] = page;
    states.push(last);

    const out = path.join(dir, "out.db");
    for (const txid of [2, 3, Math.floor(count / 2), count, count + 1, count + 2]) {
      const r = await restoreDatabase({ storage, output: out, target: { txid }, force: true });
      assert.equal(r.txid, txid);
      assert.ok(fs.readFileSync(out).equals(Buffer.concat(states[txid])), `txid ${txid} restores its image`);
    }
  }));

test("pieces: a piece list that does not add up, a piece that does not decompress, an unknown format: CORRUPT, by name", () =>
  withTempDir("pieces-bad", async (dir) => {
    const base = Array.from({ length: 4 }, randomPage);
    const { storage, t0, generation, p0 } = await snapshotReplica(dir, base);
    const builder = new SegmentBuilder(1, p0, base.length, false);
    let pos = p0;
    for (let i = 0; i * (PAGE + 41) < PIECE_BYTES * 1.5; i++) {
      const f = commitFrame(pos, 1 + (i % 4), 4, randomPage(), false, t0 + i);
      pos = f.pos;
      builder.add([f.tx], null);
    }
    const seg = builder.build(generation, PAGE);
    const segBytes = segmentBytes(seg);
    const key = segmentKey(generation, seg.meta);
    const { payload } = decodeObject(segBytes, key);
    const pieces = seg.meta.pieces!;
    assert.equal(pieces.length, 2);
    const out = path.join(dir, "out.db");
    const restoreWith = async (bytes: Uint8Array) => {
      await storage.put(key, bytes);
      return restoreDatabase({ storage, output: out, force: true });
    };

    const short = encodeObject({ ...seg.meta, pieces: [pieces[0], pieces[1] - 1] }, payload).bytes;
    await assert.rejects(
      restoreWith(short),
      corrupt(new RegExp(`^.*${key}: its pieces add up to ${payload.length - 1} bytes, the payload is ${payload.length}$`)),
    );
    const shifted = encodeObject({ ...seg.meta, pieces: [pieces[0] - 7, pieces[1] + 7] }, payload).bytes;
    await assert.rejects(restoreWith(shifted), corrupt(/has a payload that does not decompress$/));
    const future = segBytes.slice();
    new DataView(future.buffer).setUint16(8, 3);
    const hashed = encodeObject(seg.meta, payload).bytes; // the same object, to re-hash the changed preamble
    assert.ok(Buffer.from(hashed).equals(segBytes));
    const end = future.length - HASH_SIZE;
    future.set(new Uint8Array(await crypto.subtle.digest("SHA-256", future.subarray(0, end))), end);
    await assert.rejects(restoreWith(future), corrupt(/has format version 3; this walship reads 1 to 2$/));

    // Put back whole, it restores.
    const r = await restoreWith(segBytes);
    assert.equal(r.txid, seg.meta.lastTxid);
  }));

/** Runs a command to its end, without blocking the event loop (walship runs in this process). */
function run(cmd: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stderr }));
  });
}

/** A frame header with `pgno` and the commit's db size, and `page` after it. */
function frame(pgno: number, dbSize: number, page: Uint8Array): Uint8Array {
  const f = new Uint8Array(24 + page.length);
  const v = new DataView(f.buffer);
  v.setUint32(0, pgno);
  v.setUint32(4, dbSize);
  f.set(page, 24);
  return f;
}

test("page changes: the last version of each page gives the same table as every frame in order, through shrinks and early hashing", () =>
  withTempDir("page-changes", (dir) => {
    const r = prng(7);
    let previous: PageChanges | null = null;
    // Three small runs with shrinks and growth; one over more distinct pages than PageChanges holds copies of.
    for (
      const [round, start, transactions, shrinks] of [[0, 30, 400, true], [1, 30, 400, true], [2, 5, 400, true], [
        3,
        9000,
        9100,
        false,
      ]] as const
    ) {
      const reference = new PageTable(PAGE, "g", 1);
      const fast = new PageTable(PAGE, "g", 1);
      for (let p = 1; p <= start; p++) {
        const page = randomPage();
        reference.set(p, page);
        fast.set(p, page);
      }
      // Each round after the first reuses the previous round's buffer of copies (as a builder does).
      const changes: PageChanges = previous ? previous.next(start) : new PageChanges(start);
      let size: number = start;
      const page = new Uint8Array(PAGE);
      for (let t = 0; t < transactions; t++) {
        // Mostly rewrites and growth; now and then a shrink (a VACUUM or a dropped table).
        if (shrinks) size = r() % 17 === 0 ? Math.max(1, size - 1 - (r() % 12)) : size + (r() % 3 === 0 ? 1 : 0);
        const n = 1 + (r() % 3);
        const frames: Uint8Array[] = [];
        for (let i = 0; i < n; i++) {
          const pgno = shrinks ? 1 + (r() % size) : 1 + ((t + i) % size);
          new DataView(page.buffer).setUint32(0, t * 8 + i);
          page[100] = round;
          frames.push(frame(pgno, i === n - 1 ? size : 0, page));
        }
        for (const f of frames) reference.set(new DataView(f.buffer).getUint32(0), f.subarray(24));
        reference.truncate(size);
        changes.addFrames(Buffer.concat(frames), n);
      }
      changes.applyTo(fast);
      previous = changes;
      assert.equal(fast.count, reference.count, `round ${round}: page count`);
      // The saved files hold every page's hash: equal files, equal tables.
      reference.save(path.join(dir, "reference"));
      fast.save(path.join(dir, "fast"));
      assert.ok(
        fs.readFileSync(path.join(dir, "fast")).equals(fs.readFileSync(path.join(dir, "reference"))),
        `round ${round}: same hashes`,
      );
    }
  }));

test(
  "file: a real writer's blobs leave segments in pieces, and the replica restores byte for byte",
  () =>
    withTempDir("pieces-e2e", async (dir) => {
      const replica = await freshReplica("file", dir);
      const db = path.join(dir, "app.db");
      sqlite3(db, "PRAGMA journal_mode=WAL; CREATE TABLE b(id INTEGER PRIMARY KEY, v BLOB);");
      const log = recordingLog();
      const replicator = new Replicator(db, { storage: replica.storage, cacheDir: path.join(dir, "cache"), syncInterval: 2000, log });
      await replicator.start();
      // About 19 MiB of blobs in well under one sync interval, some rows rewritten.
      const py = await run("python3", [
        "-c",
        `
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA busy_timeout=10000")
for i in range(300):
    con.execute("BEGIN")
    con.execute("INSERT OR REPLACE INTO b VALUES (?, randomblob(65536))", (i % 250,))
    con.execute("COMMIT")
con.close()
`,
        db,
      ]);
      assert.equal(py.code, 0, py.stderr);
      await replicator.flush();
      await replicator.stop();
      sqlite3(db, "PRAGMA wal_checkpoint(TRUNCATE);");

      const keys = await replica.storage.list("");
      let inPieces = 0;
      for (const k of keys.filter((k) => k.key.endsWith(".wseg"))) {
        const bytes = await replica.storage.get(k.key);
        if (new DataView(bytes.buffer, bytes.byteOffset).getUint16(8) === 2) inPieces++;
      }
      assert.ok(inPieces >= 1, `no segment in pieces among ${keys.length} objects; log:\n${log.lines.map((l) => l.message).join("\n")}`);
    assert.equal(replicator.status().heals, 0, "nothing was missed");
      const out = path.join(dir, "out.db");
      const r = await restoreDatabase({ storage: replica.storage, output: out, force: true });
      assert.equal(r.txid, replicator.status().txid);
      assertSameFile(out, db);
      assert.equal(await integrityCheck(out), "ok");
    }),
  { timeout: 60_000 },
);
