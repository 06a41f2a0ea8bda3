/**
 * WAL restarts: after a complete checkpoint the next writer starts over at
 * frame 1 with salt-1 + 1, over the stale frames of the old epoch, without
 * truncating the file; a TRUNCATE checkpoint leaves a 0-byte WAL.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { inspect } from "../src/capture/inspect.ts";
import { readWalIndexFile } from "../src/capture/file_source.ts";
import {
  bytesSource,
  readWalHeader,
  scanFrames,
  verifyPosition,
} from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import {
  DB_NAME,
  frameAt,
  insertRows,
  readDbFiles,
  runSession,
  sqliteView,
  standardSteps,
  u32be,
  u32le,
  type Writer,
} from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

const PAGE = 1024;
const ROWS = 4;
const OLD_TXS = 13; // CREATE TABLE + 12

const restarts: { writer: Writer; checkpoint: string }[] = [
  { writer: "runtime", checkpoint: "RESTART" },
  { writer: "python", checkpoint: "PASSIVE" },
];

for (const { writer, checkpoint } of restarts) {
  test(`restart: after a ${checkpoint} checkpoint (${writer}) only the new epoch's short transaction is returned`, async () => {
    await withTempDir("restart", async (dir) => {
      const before = path.join(dir, "before");
      const after = path.join(dir, "after");
      const { pageCounts, rows } = await runSession(writer, path.join(dir, "live", DB_NAME), {
        pageSize: PAGE,
        steps: [
          ...standardSteps(31, OLD_TXS - 1, ROWS, 200, 1800),
          { copy: before },
          { sql: `PRAGMA wal_checkpoint(${checkpoint})` },
          { tx: insertRows(prng(32), OLD_TXS, 1, 10) },
          { copy: after },
        ],
      });
      const old = readDbFiles(before);
      const now = readDbFiles(after);
      const oldHeader = readWalHeader(bytesSource(old.wal))!;
      const oldScan = scanFrames(bytesSource(old.wal), oldHeader, null);
      assert.equal(oldScan.transactions.length, OLD_TXS);
      // The checkpoint copied every frame back: [busy, log, checkpointed].
      assert.deepEqual(rows[0], [[0, oldScan.position.frame, oldScan.position.frame]]);

      assert.equal(now.wal.length, old.wal.length, "the WAL file stays long");
      const header = readWalHeader(bytesSource(now.wal));
      assert.ok(header);
      assert.equal(header.salt1, (oldHeader.salt1 + 1) >>> 0);
      assert.equal(header.checkpointSeq, oldHeader.checkpointSeq + 1);
      const scan = scanFrames(bytesSource(now.wal), header, null);
      assert.equal(scan.transactions.length, 1);
      const tx = scan.transactions[0];
      assert.equal(tx.firstFrame, 1);
      assert.equal(tx.dbSize, pageCounts.at(-1));
      assert.equal(scan.position.frame, tx.lastFrame);
      assert.equal(scan.lastValidFrame, tx.lastFrame);
      // The next frame is a stale one of the old epoch: its salts give it away.
      const stale = frameAt(tx.lastFrame + 1, PAGE);
      assert.deepEqual([u32be(now.wal, stale + 8), u32be(now.wal, stale + 12)], [
        oldHeader.salt1,
        oldHeader.salt2,
      ]);
      assert.equal(scan.stop, "salt");

      // A position of the old epoch is not in this WAL; scanning from it starts over.
      assert.equal(verifyPosition(bytesSource(now.wal), header, oldScan.position), false);
      const fromOld = scanFrames(bytesSource(now.wal), header, oldScan.position);
      assert.equal(fromOld.fromStart, true);
      assert.deepEqual(fromOld.transactions, scan.transactions);

      // The commit ledger: iChange(now) - commits in the new epoch = iChange at the old position.
      const oldShm = readWalIndexFile(path.join(before, DB_NAME + "-shm"))!;
      const report = inspect(now.db);
      assert.equal(oldShm.mxFrame, oldScan.position.frame);
      assert.equal(report.shm!.iChange - report.wal!.commits, oldShm.iChange);
      assert.equal(report.shm!.iChange, OLD_TXS + 1);
      assert.equal(report.shm!.mxFrame, tx.lastFrame);
      assert.equal(report.shm!.nBackfill, 0);
      assert.equal(report.wal!.checkpointSeq, 1);
      assert.equal(report.wal!.commits, 1);

      // SQLite agrees: the database file holds the old epoch, the new WAL the last row.
      const view = sqliteView(dir, now.dbFile, now.wal);
      assert.equal(view.log, tx.lastFrame);
      assert.equal(view.rows, (OLD_TXS - 1) * ROWS + 1);
      assert.equal(view.maxTx, OLD_TXS);
    });
  });
}

test("restart: a restarted WAL whose stale frame still carries the new salts fails on the checksum", async () => {
  await withTempDir("restart-checksum", async (dir) => {
    const after = path.join(dir, "after");
    await runSession("runtime", path.join(dir, "live", DB_NAME), {
      pageSize: PAGE,
      steps: [
        ...standardSteps(33, 6, ROWS, 200, 1800),
        { sql: "PRAGMA wal_checkpoint(RESTART)" },
        { tx: insertRows(prng(34), 7, 1, 10) },
        { copy: after },
      ],
    });
    const { wal } = readDbFiles(after);
    const header = readWalHeader(bytesSource(wal))!;
    const first = scanFrames(bytesSource(wal), header, null);
    // Stamp the new salts on the stale frame: it is still rejected, now by the chain.
    const forged = wal.slice();
    const stale = frameAt(first.lastValidFrame + 1, PAGE);
    forged.set(wal.subarray(16, 24), stale + 8);
    const scan = scanFrames(bytesSource(forged), header, null);
    assert.equal(scan.stop, "checksum");
    assert.equal(scan.lastValidFrame, first.lastValidFrame);
    assert.deepEqual(scan.transactions, first.transactions);
  });
});

test("restart: after a TRUNCATE checkpoint the WAL is 0 bytes, inspect reports no WAL, and the -shm still reads", async () => {
  await withTempDir("truncate", async (dir) => {
    const copy = path.join(dir, "copy");
    const { pageCounts, rows } = await runSession("runtime", path.join(dir, "live", DB_NAME), {
      pageSize: PAGE,
      steps: [
        ...standardSteps(35, 4, ROWS, 200, 1800),
        { sql: "PRAGMA wal_checkpoint(TRUNCATE)" },
        { copy },
      ],
    });
    assert.equal(rows[0][0][0], 0, "the checkpoint was not busy");
    const files = readDbFiles(copy);
    assert.equal(fs.statSync(files.db + "-wal").size, 0);
    assert.equal(readWalHeader(bytesSource(files.wal)), null);
    const report = inspect(files.db);
    assert.deepEqual(report, {
      database: { pageSize: PAGE, pageCount: pageCounts.at(-1), walMode: true },
      wal: null,
      shm: {
        mxFrame: 0,
        nBackfill: 0,
        iChange: 5,
        readMarks: [0, 1, 2, 3, 4].map((i) => u32le(files.shm!, 100 + 4 * i)),
      },
    });
    assert.equal(
      files.dbFile.length,
      pageCounts.at(-1)! * PAGE,
      "everything was checkpointed into the file",
    );
  });
});
