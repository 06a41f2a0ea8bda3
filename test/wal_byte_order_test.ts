/**
 * A WAL with big-endian checksums (magic 0x377f0683), as a big-endian host
 * writes it: the scanner finds the same transactions as in the original
 * little-endian WAL, and SQLite itself reads the rewritten file, with the
 * same query results, and keeps appending big-endian frames to it.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { walChecksum } from "../src/sqlite/checksum.ts";
import {
  bytesSource,
  readWalHeader,
  scanFrames,
  type WalTransaction,
} from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import {
  DB_NAME,
  FRAME_HEADER,
  insertRows,
  placeDb,
  readDbFiles,
  referenceFrames,
  rewriteByteOrder,
  runSession,
  sqlite3,
  sqliteView,
  standardSteps,
  u32be,
} from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

const PAGE = 1024;
const QUERY = "SELECT id, tx, hex(v) FROM t ORDER BY id;\nPRAGMA integrity_check;\n";

/** A transaction without its checksums, which differ between byte orders. */
function shape(tx: WalTransaction) {
  const { checksum1: _c1, checksum2: _c2, frames: _f, ...rest } = tx;
  return rest;
}

/** Frame bytes with each frame's checksum fields zeroed. */
function withoutChecksums(frames: Uint8Array): Uint8Array {
  const out = frames.slice();
  for (let at = 0; at < out.length; at += FRAME_HEADER + PAGE) out.fill(0, at + 16, at + 24);
  return out;
}

test("byte order: a WAL rewritten with big-endian checksums gives the same transactions, and SQLite reads it", async () => {
  await withTempDir("big-endian", async (dir) => {
    const copy = path.join(dir, "copy");
    const { pageCounts } = await runSession("runtime", path.join(dir, "live", DB_NAME), {
      pageSize: PAGE,
      steps: [...standardSteps(11, 8, 4, 100, 2500), { copy }],
    });
    const files = readDbFiles(copy);
    const le = files.wal;
    const be = rewriteByteOrder(le, true);
    assert.equal(u32be(be, 0), 0x377f0683);
    assert.equal(be.length, le.length);
    assert.deepEqual(rewriteByteOrder(be, false), le, "rewriting back gives the original bytes");

    const leHeader = readWalHeader(bytesSource(le))!;
    const beHeader = readWalHeader(bytesSource(be));
    assert.ok(beHeader);
    assert.equal(leHeader.bigEndian, false);
    assert.equal(beHeader.bigEndian, true);
    assert.deepEqual(
      { ...beHeader, bigEndian: false, checksum1: 0, checksum2: 0 },
      { ...leHeader, checksum1: 0, checksum2: 0 },
    );

    const leScan = scanFrames(bytesSource(le), leHeader, null, { collect: true });
    const beScan = scanFrames(bytesSource(be), beHeader, null, { collect: true });
    assert.equal(beScan.transactions.length, 9);
    assert.deepEqual(beScan.transactions.map((t) => t.dbSize), pageCounts);
    assert.deepEqual(beScan.transactions.map(shape), leScan.transactions.map(shape));
    beScan.transactions.forEach((tx, i) => {
      assert.deepEqual(
        withoutChecksums(tx.frames!),
        withoutChecksums(leScan.transactions[i].frames!),
      );
      assert.notDeepEqual([tx.checksum1, tx.checksum2], [
        leScan.transactions[i].checksum1,
        leScan.transactions[i].checksum2,
      ]);
    });
    assert.equal(beScan.stop, "end");
    assert.equal(beScan.lastValidFrame, leScan.lastValidFrame);

    // Every stored big-endian checksum is what walChecksum computes in big-endian order.
    const state = new Uint32Array(2);
    walChecksum(state, be, 0, 24, true);
    assert.deepEqual([state[0], state[1]], [u32be(be, 24), u32be(be, 28)]);
    for (const f of referenceFrames(be).frames) {
      walChecksum(state, be, f.offset, 8, true);
      walChecksum(state, be, f.offset + FRAME_HEADER, PAGE, true);
      assert.deepEqual([state[0], state[1]], [u32be(be, f.offset + 16), u32be(be, f.offset + 20)]);
    }

    // SQLite reads the big-endian WAL (no -shm: it recovers from the WAL alone).
    const original = sqlite3(placeDb(dir, files.dbFile, le), QUERY);
    assert.ok(original.endsWith("\nok\n"));
    assert.equal(original.split("\n").length, 8 * 4 + 2, "32 rows, ok, and the final newline");
    assert.equal(sqlite3(placeDb(dir, files.dbFile, be), QUERY), original);
    assert.deepEqual(sqliteView(dir, files.dbFile, be), sqliteView(dir, files.dbFile, le));
    assert.equal(sqliteView(dir, files.dbFile, be).log, beScan.position.frame);
  });
});

test("byte order: frames SQLite appends to a big-endian WAL validate, and a wrong-order chain does not", async () => {
  await withTempDir("big-endian-append", async (dir) => {
    const copy = path.join(dir, "copy");
    await runSession("python", path.join(dir, "live", DB_NAME), {
      pageSize: PAGE,
      steps: [...standardSteps(12, 3, 4, 100, 2500), { copy }],
    });
    const files = readDbFiles(copy);
    const be = rewriteByteOrder(files.wal, true);
    const before = scanFrames(bytesSource(be), readWalHeader(bytesSource(be))!, null);
    assert.equal(before.transactions.length, 4);

    // SQLite opens the big-endian WAL, commits one more transaction, and we copy it while still open.
    const db = placeDb(dir, files.dbFile, be);
    const appended = path.join(dir, "appended");
    fs.mkdirSync(appended);
    const rows = insertRows(prng(13), 4, 3, 1500);
    sqlite3(
      db,
      `PRAGMA wal_autocheckpoint=0;\nBEGIN;\n${rows.join(";\n")};\nCOMMIT;\n` +
        `.system cp ${db}-wal ${path.join(appended, "wal")}\n`,
    );
    const grown = new Uint8Array(fs.readFileSync(path.join(appended, "wal")));
    assert.equal(u32be(grown, 0), 0x377f0683, "SQLite kept the big-endian magic");
    assert.ok(grown.length > be.length);
    const header = readWalHeader(bytesSource(grown))!;
    const scan = scanFrames(bytesSource(grown), header, before.position);
    assert.equal(scan.fromStart, false);
    assert.equal(scan.transactions.length, 1);
    assert.equal(scan.transactions[0].firstFrame, before.position.frame + 1);
    assert.equal(scan.stop, "end");
    assert.equal(scan.position.frame, referenceFrames(grown).frames.length);

    // The same bytes read with the little-endian rule break at frame 1.
    const lying = grown.slice();
    lying[3] = 0x82; // magic 0x377f0682 without fixing anything else: the header checksum fails
    assert.equal(readWalHeader(bytesSource(lying)), null);
    const wrongOrder = scanFrames(bytesSource(grown), { ...header, bigEndian: false }, null);
    assert.equal(wrongOrder.stop, "checksum");
    assert.equal(wrongOrder.lastValidFrame, 0);
    assert.equal(wrongOrder.transactions.length, 0);
  });
});
