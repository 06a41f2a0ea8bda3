/**
 * Damage in the middle or at the end of a real WAL: the scanner stops at the
 * first bad frame, for the right reason, returns only whole transactions
 * before it, and agrees with what SQLite's own recovery keeps.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { bytesSource, readWalHeader, scanFrames, type WalScan } from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import {
  DB_NAME,
  type DbFiles,
  flipBit,
  FRAME_HEADER,
  frameAt,
  placeDb,
  readDbFiles,
  runSession,
  sqliteViews,
  standardSteps,
  type Writer,
} from "./_wal_fixtures.ts";
import { withTempDir } from "./_util.ts";

const PAGE = 1024;
const ROWS = 4;
const TXS = 10; // CREATE TABLE + 9 inserting transactions

async function realWal(dir: string, writer: Writer): Promise<{ files: DbFiles; scan: WalScan }> {
  const copy = path.join(dir, "copy");
  await runSession(writer, path.join(dir, "live", DB_NAME), {
    pageSize: PAGE,
    steps: [...standardSteps(21, TXS - 1, ROWS, 200, 1800), { copy }],
  });
  const files = readDbFiles(copy);
  const scan = scan0(files.wal);
  assert.equal(scan.transactions.length, TXS);
  assert.equal(scan.stop, "end");
  for (const tx of scan.transactions.slice(1)) {
    assert.ok(tx.lastFrame - tx.firstFrame >= 2, "multi-frame transactions");
  }
  return { files, scan };
}

function scan0(wal: Uint8Array): WalScan {
  const header = readWalHeader(bytesSource(wal));
  assert.ok(header);
  return scanFrames(bytesSource(wal), header, null, { collect: true });
}

test("corruption: a flipped bit in frame k's page stops the scan at k, and SQLite agrees", async () => {
  await withTempDir("flip", async (dir) => {
    const { files, scan } = await realWal(dir, "python");
    const txs = scan.transactions;
    // Frame k: frame 1, the first frame of a transaction, one in its middle, its commit frame, the last frame.
    const targets = [
      1,
      txs[4].firstFrame,
      txs[5].firstFrame + 1,
      txs[6].lastFrame,
      txs[TXS - 1].lastFrame,
    ];
    const cases = targets.map((k) => {
      const bit = k % 8;
      const wal = flipBit(files.wal, frameAt(k, PAGE) + FRAME_HEADER + 100 + k, bit);
      return { k, wal, db: placeDb(dir, files.dbFile, wal) };
    });
    const views = sqliteViews(cases.map((c) => c.db));
    cases.forEach(({ k, wal }, i) => {
      const damaged = scan0(wal);
      const before = txs.filter((t) => t.lastFrame < k);
      assert.equal(damaged.stop, "checksum", `frame ${k}`);
      assert.equal(damaged.lastValidFrame, k - 1);
      assert.deepEqual(damaged.transactions, before);
      for (const tx of damaged.transactions) assert.ok(tx.lastFrame < k);
      assert.equal(damaged.position.frame, before.at(-1)?.lastFrame ?? 0);
      // SQLite's recovery keeps the same commits: same last frame, same rows.
      assert.equal(views[i].log, damaged.position.frame, `SQLite's log for frame ${k}`);
      assert.equal(views[i].rows, before.length === 0 ? null : (before.length - 1) * ROWS);
    });
  });
});

test("corruption: a torn last frame (file cut mid-frame) ends the log; the last whole transaction before it is the last returned", async () => {
  await withTempDir("torn", async (dir) => {
    const { files, scan } = await realWal(dir, "runtime");
    const last = scan.transactions[TXS - 1];
    const cuts = [
      { at: files.wal.length - 1, lastValid: last.lastFrame - 1 }, // commit frame missing its last byte
      { at: frameAt(last.lastFrame, PAGE) + 10, lastValid: last.lastFrame - 1 }, // inside the frame header
      { at: frameAt(last.firstFrame + 1, PAGE) + FRAME_HEADER + 500, lastValid: last.firstFrame },
      { at: frameAt(last.firstFrame + 1, PAGE), lastValid: last.firstFrame }, // on a frame boundary
      { at: 40, lastValid: 0 },
    ];
    const views = sqliteViews(
      cuts.map((c) => placeDb(dir, files.dbFile, files.wal.subarray(0, c.at))),
    );
    cuts.forEach((cut, i) => {
      const torn = scan0(files.wal.subarray(0, cut.at));
      assert.equal(torn.stop, "end", `cut at ${cut.at}`);
      assert.equal(torn.lastValidFrame, cut.lastValid);
      const expected = scan.transactions.filter((t) => t.lastFrame <= cut.lastValid);
      assert.deepEqual(torn.transactions, expected);
      assert.equal(torn.position.frame, expected.at(-1)?.lastFrame ?? 0);
      assert.equal(views[i].log, torn.position.frame);
    });
    assert.deepEqual(
      scan0(files.wal.subarray(0, cuts[0].at)).transactions.at(-1),
      scan.transactions[TXS - 2],
    );
  });
});

test("corruption: a frame with foreign salts stops with 'salt', one with page number 0 with 'page-number'", async () => {
  await withTempDir("salt", async (dir) => {
    const { files, scan } = await realWal(dir, "cli");
    const k = scan.transactions[3].firstFrame + 1;
    const salted = flipBit(files.wal, frameAt(k, PAGE) + 12, 3); // salt-2 of frame k
    const zeroed = files.wal.slice();
    zeroed.fill(0, frameAt(k, PAGE), frameAt(k, PAGE) + 4); // page number of frame k
    const views = sqliteViews([
      placeDb(dir, files.dbFile, salted),
      placeDb(dir, files.dbFile, zeroed),
    ]);
    for (
      const [wal, stop, view] of [[salted, "salt", views[0]], [
        zeroed,
        "page-number",
        views[1],
      ]] as const
    ) {
      const damaged = scan0(wal);
      assert.equal(damaged.stop, stop);
      assert.equal(damaged.lastValidFrame, k - 1);
      assert.deepEqual(damaged.transactions, scan.transactions.slice(0, 3));
      assert.equal(view.log, scan.transactions[2].lastFrame);
      assert.equal(view.rows, 2 * ROWS);
    }
  });
});

test("corruption: a damaged WAL header means no WAL at all, for us and for SQLite", async () => {
  await withTempDir("header", async (dir) => {
    const { files } = await realWal(dir, "python");
    const damaged = [
      flipBit(files.wal, 3, 2), // magic
      flipBit(files.wal, 7, 0), // version
      flipBit(files.wal, 10, 0), // page size
      flipBit(files.wal, 17, 5), // salt-1 (header checksum no longer matches)
      flipBit(files.wal, 30, 1), // checksum-2
      files.wal.subarray(0, 31),
    ];
    const views = sqliteViews(damaged.map((wal) => placeDb(dir, files.dbFile, wal)));
    damaged.forEach((wal, i) => {
      assert.equal(readWalHeader(bytesSource(wal)), null, `damage ${i}`);
      assert.equal(views[i].log, 0);
      assert.equal(views[i].rows, null, "SQLite sees the empty database in the db file");
    });
  });
});
