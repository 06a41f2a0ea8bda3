/**
 * Page sizes 512, 4096 and 65536, each written by a different real SQLite:
 * the scanner and `inspect` report the page size, frames, commits, last
 * commit frame and database size SQLite wrote.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { inspect } from "../src/capture/inspect.ts";
import { parseDbHeader } from "../src/sqlite/db_header.ts";
import { bytesSource, readWalHeader, scanFrames } from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import {
  DB_NAME,
  FRAME_HEADER,
  frameAt,
  readDbFiles,
  runSession,
  sqliteView,
  standardSteps,
  u32be,
  u32le,
  WAL_HEADER,
  type Writer,
} from "./_wal_fixtures.ts";
import { withTempDir } from "./_util.ts";

const cases: { pageSize: number; writer: Writer; rows: number; size: [number, number] }[] = [
  { pageSize: 512, writer: "runtime", rows: 12, size: [40, 700] },
  { pageSize: 4096, writer: "python", rows: 10, size: [100, 6000] },
  { pageSize: 65536, writer: "cli", rows: 4, size: [1000, 70000] },
];
const TRANSACTIONS = 7; // CREATE TABLE + 6 inserting transactions

for (const c of cases) {
  test(`page size ${c.pageSize} (${c.writer} writer): scanner and inspect match what SQLite wrote`, async () => {
    await withTempDir(`pagesize-${c.pageSize}`, async (dir) => {
      const copy = path.join(dir, "copy");
      const steps = standardSteps(c.pageSize, TRANSACTIONS - 1, c.rows, ...c.size);
      const { pageCounts } = await runSession(c.writer, path.join(dir, "live", DB_NAME), {
        pageSize: c.pageSize,
        steps: [...steps, { copy }],
      });
      assert.equal(pageCounts.length, TRANSACTIONS);
      const files = readDbFiles(copy);
      const frameSize = FRAME_HEADER + c.pageSize;

      // The database header: 65536 is stored as 1.
      const rawPageSize = (files.dbFile[16] << 8) | files.dbFile[17];
      assert.equal(rawPageSize, c.pageSize === 65536 ? 1 : c.pageSize);
      assert.equal(parseDbHeader(files.dbFile.subarray(0, 100)).pageSize, c.pageSize);

      // SQLite's own recovery of the copy is the oracle for the committed frames.
      const view = sqliteView(dir, files.dbFile, files.wal);
      assert.equal(view.rows, (TRANSACTIONS - 1) * c.rows);
      assert.equal((files.wal.length - WAL_HEADER) % frameSize, 0);
      const framesInFile = (files.wal.length - WAL_HEADER) / frameSize;
      assert.equal(view.log, framesInFile, "no stale or uncommitted frames in this WAL");
      assert.ok(framesInFile > TRANSACTIONS, "some transactions span several frames");

      const header = readWalHeader(bytesSource(files.wal));
      assert.ok(header);
      assert.equal(header.pageSize, c.pageSize);
      const scan = scanFrames(bytesSource(files.wal), header, null);
      assert.equal(scan.stop, "end");
      assert.equal(scan.lastValidFrame, view.log);
      assert.equal(scan.position.frame, view.log);
      assert.equal(scan.transactions.length, TRANSACTIONS);
      let next = 1;
      scan.transactions.forEach((tx, i) => {
        assert.equal(tx.firstFrame, next, `transaction ${i} starts right after the previous one`);
        assert.equal(tx.offset, frameAt(tx.firstFrame, c.pageSize));
        assert.equal(tx.end, frameAt(tx.lastFrame + 1, c.pageSize));
        assert.equal(
          tx.dbSize,
          pageCounts[i],
          `db size after transaction ${i} = PRAGMA page_count`,
        );
        const pages = [];
        for (let k = tx.firstFrame; k <= tx.lastFrame; k++) {
          pages.push(u32be(files.wal, frameAt(k, c.pageSize)));
        }
        assert.deepEqual(tx.pages, pages);
        next = tx.lastFrame + 1;
      });

      assert.deepEqual(inspect(files.db), {
        database: {
          pageSize: c.pageSize,
          pageCount: files.dbFile.length / c.pageSize,
          walMode: true,
        },
        wal: {
          pageSize: c.pageSize,
          checkpointSeq: 0,
          salt1: u32be(files.wal, 16),
          salt2: u32be(files.wal, 20),
          bigEndianChecksum: false,
          validFrames: view.log,
          lastCommitFrame: view.log,
          commits: TRANSACTIONS,
          dbPages: pageCounts.at(-1),
        },
        shm: {
          mxFrame: view.log,
          nBackfill: 0,
          iChange: TRANSACTIONS,
          readMarks: [0, 1, 2, 3, 4].map((i) => u32le(files.shm!, 100 + 4 * i)),
        },
      });
    });
  });
}
