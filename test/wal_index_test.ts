/**
 * The wal-index header of a real, live -shm: mxFrame, salts, checksum and
 * database size match the WAL; iChange counts commits one by one; damaged
 * or half-written headers are refused with the right reason.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { openReadOnly, readWalIndexFile } from "../src/capture/file_source.ts";
import {
  parseWalIndex,
  READ_MARK_UNUSED,
  WAL_INDEX_HEADER_BYTES,
  type WalIndexHeader,
} from "../src/sqlite/wal_index.ts";
import { readWalHeader, scanFrames } from "../src/sqlite/wal_scanner.ts";
import { openSqlite, test } from "./_runtime.ts";
import { CREATE_TABLE, DB_NAME, insertRows, u32le } from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

const PAGE = 4096;

function header(bytes: Uint8Array): WalIndexHeader {
  const parsed = parseWalIndex(bytes);
  assert.ok("header" in parsed, `expected a header, got ${JSON.stringify(parsed)}`);
  return parsed.header;
}

test("wal-index: a live -shm matches the WAL after every commit, and iChange counts the commits", async () => {
  await withTempDir("shm", async (dir) => {
    const db = path.join(dir, DB_NAME);
    const con = await openSqlite(db);
    const rand = prng(51);
    try {
      con.exec(`PRAGMA page_size=${PAGE}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;`);
      let previous: WalIndexHeader | null = null;
      for (let tx = 0; tx < 7; tx++) {
        con.exec("BEGIN");
        for (const s of tx === 0 ? [CREATE_TABLE] : insertRows(rand, tx, 2, 100, 9000)) con.exec(s);
        con.exec("COMMIT");
        const pageCount = Number(Object.values(con.all("PRAGMA page_count")[0])[0]);

        const shmBytes = new Uint8Array(fs.readFileSync(db + "-shm"));
        const h = header(shmBytes);
        const wal = openReadOnly(db + "-wal")!;
        const walHeader = readWalHeader(wal)!;
        const scan = scanFrames(wal, walHeader, null);
        wal.close();
        assert.equal(scan.transactions.length, tx + 1);
        assert.equal(h.mxFrame, scan.position.frame, `mxFrame after commit ${tx}`);
        assert.equal(h.mxFrame, scan.lastValidFrame);
        assert.deepEqual([h.salt1, h.salt2], [walHeader.salt1, walHeader.salt2]);
        assert.deepEqual([h.frameChecksum1, h.frameChecksum2], [
          scan.position.checksum1,
          scan.position.checksum2,
        ]);
        assert.equal(h.nPage, pageCount);
        assert.equal(h.pageSize, PAGE);
        assert.equal(h.bigEndianChecksum, false);
        assert.equal(h.nBackfill, 0);
        assert.equal(h.nBackfillAttempted, 0);
        assert.equal(h.readMarks.length, 5);
        assert.equal(h.readMarks[0], 0);
        assert.deepEqual(h.readMarks, [0, 1, 2, 3, 4].map((i) => u32le(shmBytes, 100 + 4 * i)));
        assert.equal(
          h.iChange,
          previous === null ? 1 : previous.iChange + 1,
          `iChange after commit ${tx}`,
        );
        assert.deepEqual(readWalIndexFile(db + "-shm"), h);
        previous = h;
      }

      // A checkpoint with no reader backfills every frame; no commit, so iChange stays.
      const [busy, log, done] = Object.values(con.all("PRAGMA wal_checkpoint(PASSIVE)")[0]).map(
        Number,
      );
      assert.deepEqual([busy, log, done], [0, previous!.mxFrame, previous!.mxFrame]);
      const shmBytes = new Uint8Array(fs.readFileSync(db + "-shm"));
      const h = header(shmBytes);
      assert.equal(h.nBackfill, h.mxFrame);
      assert.equal(h.nBackfill, u32le(shmBytes, 96));
      // Set before the checkpoint copies its first page (the direct snapshot read relies on it).
      assert.equal(h.nBackfillAttempted, h.mxFrame);
      assert.equal(h.nBackfillAttempted, u32le(shmBytes, 128));
      assert.equal(h.iChange, previous!.iChange);
      assert.deepEqual(h.readMarks, [0, 1, 2, 3, 4].map((i) => u32le(shmBytes, 100 + 4 * i)));
      assert.ok(h.readMarks.includes(READ_MARK_UNUSED));
    } finally {
      con.close();
    }
  });
});

test("wal-index: copies that differ, a bad checksum, a short or uninitialized header are each named", async () => {
  await withTempDir("shm-damage", async (dir) => {
    const db = path.join(dir, DB_NAME);
    const con = await openSqlite(db);
    let shm: Uint8Array;
    try {
      con.exec(`PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; ${CREATE_TABLE};`);
      shm = new Uint8Array(fs.readFileSync(db + "-shm"));
    } finally {
      con.close();
    }
    const good = header(shm);
    assert.equal(good.iChange, 1);

    const differ = shm.slice();
    differ[48 + 16] ^= 1; // mxFrame of the second copy only
    assert.deepEqual(parseWalIndex(differ), { problem: "copies-differ" });

    const both = shm.slice();
    both[16] ^= 1; // the same byte of mxFrame in both copies: they agree, the checksum does not
    both[48 + 16] ^= 1;
    assert.deepEqual(parseWalIndex(both), { problem: "checksum" });

    const checksumOnly = shm.slice();
    checksumOnly[40] ^= 0x80;
    checksumOnly[48 + 40] ^= 0x80;
    assert.deepEqual(parseWalIndex(checksumOnly), { problem: "checksum" });

    const uninit = shm.slice();
    uninit[12] = 0;
    uninit[48 + 12] = 0;
    assert.deepEqual(parseWalIndex(uninit), { problem: "not-initialized" });

    assert.deepEqual(parseWalIndex(shm.subarray(0, WAL_INDEX_HEADER_BYTES - 1)), {
      problem: "short",
    });
    assert.deepEqual(header(shm.subarray(0, WAL_INDEX_HEADER_BYTES)), good);

    // Unaligned bytes parse the same.
    const shifted = new Uint8Array(WAL_INDEX_HEADER_BYTES + 3).subarray(3);
    shifted.set(shm.subarray(0, WAL_INDEX_HEADER_BYTES));
    assert.deepEqual(header(shifted), good);

    // The file reader gives up on a header that never becomes consistent.
    const damaged = path.join(dir, "damaged-shm");
    fs.writeFileSync(damaged, differ);
    assert.equal(readWalIndexFile(damaged, 3), null);
    assert.equal(readWalIndexFile(path.join(dir, "absent-shm")), null);
  });
});
