/**
 * The database header: page size (1 stored for 65536), page count, WAL or
 * rollback-journal mode, and refusal of anything that is not SQLite.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { WalshipError } from "../src/errors.ts";
import { lockPage, parseDbHeader, SQLITE_MAGIC } from "../src/sqlite/db_header.ts";
import { test } from "./_runtime.ts";
import { randomBytes, sqlite3 } from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

function head(file: string): Uint8Array {
  return new Uint8Array(fs.readFileSync(file)).subarray(0, 100);
}

test("db header: page size (65536 stored as 1), page count and journal mode of real databases", async () => {
  await withTempDir("dbheader", (dir) => {
    for (
      const [pageSize, wal] of [[512, false], [4096, true], [65536, true], [65536, false]] as const
    ) {
      const db = path.join(dir, `p${pageSize}-${wal}.db`);
      const out = sqlite3(
        db,
        `PRAGMA page_size=${pageSize};\n${wal ? "PRAGMA journal_mode=WAL;\n" : ""}` +
          "CREATE TABLE t(v);\nINSERT INTO t VALUES (randomblob(3000));\n" +
          "PRAGMA wal_checkpoint(TRUNCATE);\nPRAGMA page_count;\n",
      );
      const pageCount = Number(out.trim().split("\n").at(-1));
      const bytes = head(db);
      assert.equal((bytes[16] << 8) | bytes[17], pageSize === 65536 ? 1 : pageSize);
      const h = parseDbHeader(bytes);
      assert.equal(h.pageSize, pageSize);
      assert.equal(h.walMode, wal);
      assert.equal(h.pageCount, pageCount);
      assert.equal(fs.statSync(db).size, pageCount * pageSize);
    }
  });
});

test("db header: a stale page count (version-valid-for behind the change counter) is reported as null", async () => {
  await withTempDir("dbheader-stale", (dir) => {
    const db = path.join(dir, "a.db");
    sqlite3(db, "CREATE TABLE t(v);\n");
    const bytes = head(db).slice();
    assert.equal(typeof parseDbHeader(bytes).pageCount, "number");
    new DataView(bytes.buffer).setUint32(92, parseDbHeader(bytes).changeCounter - 1);
    assert.equal(parseDbHeader(bytes).pageCount, null);
  });
});

test("db header: WAL mode needs both the write and the read version bytes at 2", async () => {
  await withTempDir("dbheader-versions", (dir) => {
    const db = path.join(dir, "a.db");
    sqlite3(db, "PRAGMA journal_mode=WAL;\nCREATE TABLE t(v);\n");
    const bytes = head(db).slice();
    assert.deepEqual([bytes[18], bytes[19]], [2, 2]);
    const modes = [[2, 2, true], [1, 1, false], [2, 1, false], [1, 2, false]] as const;
    for (const [write, read, wal] of modes) {
      bytes[18] = write;
      bytes[19] = read;
      assert.equal(parseDbHeader(bytes).walMode, wal, `versions ${write}/${read}`);
    }
  });
});

test("db header: garbage, text, a short file and a bad page size are NOT_SQLITE", () => {
  const cases: [Uint8Array, string][] = [
    [randomBytes(prng(61), 100), "not a SQLite database (bad header)"],
    [
      new TextEncoder().encode("hello, this is a text file, not a database\n".repeat(4)),
      "not a SQLite database (bad header)",
    ],
    [SQLITE_MAGIC.slice(), "not a SQLite database (bad header)"],
  ];
  const badPageSize = new Uint8Array(100);
  badPageSize.set(SQLITE_MAGIC);
  badPageSize[16] = 0x03;
  badPageSize[17] = 0xe8; // 1000
  cases.push([badPageSize, "not a SQLite database (invalid page size 1000)"]);
  for (const [bytes, message] of cases) {
    assert.throws(() => parseDbHeader(bytes), (err: unknown) => {
      assert.ok(err instanceof WalshipError);
      assert.equal(err.code, "NOT_SQLITE");
      assert.equal(err.message, message);
      return true;
    });
  }
});

test("db header: the lock page holds byte 0x40000000", () => {
  assert.equal(lockPage(4096), 262145);
  assert.equal(lockPage(512), 2097153);
  assert.equal(lockPage(1024), 1048577);
  assert.equal(lockPage(65536), 16385);
  for (const pageSize of [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]) {
    const first = (lockPage(pageSize) - 1) * pageSize;
    assert.ok(first <= 0x40000000 && 0x40000000 < first + pageSize, `page size ${pageSize}`);
  }
});
