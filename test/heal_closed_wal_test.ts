/**
 * A database with no connection open has no WAL. Each short session of the
 * sqlite3 CLI then creates a WAL, commits, checkpoints it into the database
 * on close and deletes it, possibly all between two polls of walship. The
 * database file changing while no WAL is present must count as lost
 * continuity and be healed (invariant 4), never silently skipped.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Replicator } from "../src/replicate/replicator.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { test } from "./_runtime.ts";
import { dumpLive, freshReplica, recordingLog } from "./_replication_fixtures.ts";
import { withTempDir } from "./_util.ts";

const sqlite3 = (db: string, sql: string) => execFileSync("sqlite3", [db, sql], { encoding: "utf8" });

for (const pin of [true, false]) {
  test(`pin ${pin}: commits of WALs created, checkpointed and deleted between polls are healed, not lost`, async () => {
    await withTempDir("closed-wal", async (dir) => {
      const db = path.join(dir, "app.db");
      sqlite3(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
      assert.equal(fs.existsSync(db + "-wal"), false, "no connection open: no WAL");
      const replica = await freshReplica("file", dir);
      const log = recordingLog();
      // A long poll interval: the sessions below come and go between polls.
      const r = new Replicator(db, {
        storage: replica.storage,
        cacheDir: path.join(dir, "cache"),
        syncInterval: 10_000,
        pollInterval: 10_000,
        pin,
        log,
      });
      await r.start();
      try {
        for (let i = 1; i <= 5; i++) sqlite3(db, `INSERT INTO t(v) VALUES ('row ${i}');`);
        assert.equal(fs.existsSync(db + "-wal"), false, "each session deleted its WAL");
        await r.flush();
        const out = path.join(dir, "restored.db");
        const restored = await restoreDatabase({ storage: replica.storage, output: out, target: {} });
        assert.equal(await dumpLive(out), await dumpLive(db), "the restored copy holds every row");
        assert.ok(restored.txid > 1, "something after the first snapshot was shipped");
        assert.ok(
          log.lines.some((l) => l.message.includes("the database file changed while no WAL was present")),
          "the reason was logged",
        );
      } finally {
        await r.stop();
      }
    });
  });
}
