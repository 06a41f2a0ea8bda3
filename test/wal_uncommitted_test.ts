/**
 * Frames of a transaction that spilled to the WAL (small cache, big
 * transaction) and never committed, because the writer was SIGKILLed or
 * rolled back: they pass the checksum chain, yet are never returned as a
 * transaction and never counted as committed (DESIGN.md invariant 1).
 */

import assert from "node:assert/strict";
import path from "node:path";
import { inspect } from "../src/capture/inspect.ts";
import { readWalIndexFile } from "../src/capture/file_source.ts";
import { bytesSource, readWalHeader, scanFrames, type WalScan } from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import {
  bulkInsert,
  DB_NAME,
  type DbFiles,
  readDbFiles,
  referenceFrames,
  runSession,
  sqliteView,
  standardSteps,
} from "./_wal_fixtures.ts";
import { withTempDir } from "./_util.ts";

const ROWS = 5;

function scanAll(wal: Uint8Array): WalScan {
  const header = readWalHeader(bytesSource(wal));
  assert.ok(header);
  return scanFrames(bytesSource(wal), header, null);
}

/** Everything that must hold for a WAL whose tail holds an unfinished transaction. */
function assertUncommittedTail(
  dir: string,
  files: DbFiles,
  committed: number,
  pageCounts: number[],
) {
  const scan = scanAll(files.wal);
  const ref = referenceFrames(files.wal).frames;
  const lastCommit = ref.findLast((f) => f.commitSize !== 0)!;

  assert.equal(scan.transactions.length, committed);
  assert.equal(scan.position.frame, lastCommit.index);
  assert.equal(scan.transactions.at(-1)!.lastFrame, lastCommit.index);
  assert.deepEqual(scan.transactions.map((t) => t.dbSize), pageCounts);
  // The spilled frames are valid (the reference walk accepts them) but not committed.
  assert.equal(scan.lastValidFrame, ref.length);
  assert.ok(scan.lastValidFrame > scan.position.frame + 10, `${scan.lastValidFrame} valid frames`);
  for (const f of ref.slice(lastCommit.index)) assert.equal(f.commitSize, 0, `frame ${f.index}`);
  for (const tx of scan.transactions) assert.ok(tx.lastFrame <= lastCommit.index);

  // SQLite agrees: recovery keeps exactly the committed frames and rows.
  const view = sqliteView(dir, files.dbFile, files.wal);
  assert.equal(view.log, scan.position.frame);
  assert.equal(view.rows, (committed - 1) * ROWS);
  assert.equal(view.maxTx, committed - 1);

  const report = inspect(files.db);
  assert.equal(report.wal!.validFrames, ref.length);
  assert.equal(report.wal!.lastCommitFrame, lastCommit.index);
  assert.equal(report.wal!.commits, committed);
  assert.equal(report.wal!.dbPages, pageCounts.at(-1));
  assert.ok(report.wal!.validFrames > report.wal!.lastCommitFrame);
  assert.equal(readWalIndexFile(files.db + "-shm")!.mxFrame, lastCommit.index);
}

test("uncommitted: frames spilled by a writer SIGKILLed before COMMIT are never returned", async () => {
  await withTempDir("spill-kill", async (dir) => {
    const live = path.join(dir, "live", DB_NAME);
    const { pageCounts } = await runSession("python", live, {
      pageSize: 1024,
      cacheSize: 10,
      steps: [
        ...standardSteps(3, 3, ROWS, 300, 1500),
        { sql: "BEGIN" },
        { sql: bulkInsert(99, 300, 900) },
        { kill: true },
      ],
    });
    assert.equal(pageCounts.length, 4);
    // The killed writer left its files as they were: no close, no checkpoint.
    assertUncommittedTail(dir, readDbFiles(path.dirname(live)), 4, pageCounts);
  });
});

test("uncommitted: frames spilled by a transaction that rolled back are never returned", async () => {
  await withTempDir("spill-rollback", async (dir) => {
    const copy = path.join(dir, "copy");
    const { pageCounts } = await runSession("runtime", path.join(dir, "live", DB_NAME), {
      pageSize: 1024,
      cacheSize: 10,
      steps: [
        ...standardSteps(4, 2, ROWS, 300, 1500),
        { sql: "BEGIN" },
        { sql: bulkInsert(99, 300, 900) },
        { sql: "ROLLBACK" },
        { copy },
      ],
    });
    assertUncommittedTail(dir, readDbFiles(copy), 3, pageCounts);
  });
});

test("uncommitted: a commit after a rollback overwrites the spilled frames; the rest break the chain", async () => {
  await withTempDir("spill-overwrite", async (dir) => {
    const before = path.join(dir, "before");
    const after = path.join(dir, "after");
    const steps = standardSteps(5, 3, ROWS, 300, 1500);
    const { pageCounts } = await runSession("runtime", path.join(dir, "live", DB_NAME), {
      pageSize: 1024,
      cacheSize: 10,
      steps: [
        ...steps.slice(0, 3),
        { sql: "BEGIN" },
        { sql: bulkInsert(99, 300, 900) },
        { sql: "ROLLBACK" },
        { copy: before },
        steps[3],
        { copy: after },
      ],
    });
    const old = scanAll(readDbFiles(before).wal);
    const files = readDbFiles(after);
    assert.equal(files.wal.length, readDbFiles(before).wal.length, "the WAL did not grow");
    const scan = scanAll(files.wal);
    assert.deepEqual(scan.transactions.slice(0, 3), old.transactions);
    assert.equal(scan.transactions.length, 4);
    const last = scan.transactions[3];
    assert.equal(last.firstFrame, old.position.frame + 1);
    assert.equal(last.dbSize, pageCounts[3]);
    // The first spilled frame not overwritten follows another chain now.
    assert.equal(scan.stop, "checksum");
    assert.equal(scan.lastValidFrame, last.lastFrame);
    assert.ok(old.lastValidFrame > last.lastFrame);
    const view = sqliteView(dir, files.dbFile, files.wal);
    assert.equal(view.log, last.lastFrame);
    assert.equal(view.rows, 3 * ROWS);
  });
});
