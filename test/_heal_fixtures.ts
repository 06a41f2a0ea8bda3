/**
 * Fixtures for the heal tests: a database large enough that a heal and a
 * snapshot differ in size (a table of random, incompressible rows), the
 * pages two database images differ in (what a heal must ship, no more, no
 * less), the heal lines of a walship log, and what the local cache says.
 *
 * @module
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import type { SegmentEntry } from "../src/replica/layout.ts";
import { type LogLine, PythonWriter, type Replica, restoreTo, workloadState, type WriterDone } from "./_replication_fixtures.ts";
import { waitFor } from "./_util.ts";

/** Page size of every heal test database. */
export const PAGE = 4096;

/**
 * Creates `db` in WAL mode with the workload's (empty) tables and a table
 * `bulk` of `mib` MiB of random 3,000-byte rows (one row a page: random bytes do not compress, so a
 * snapshot is about as large as the database), checkpointed and closed.
 */
export function makeBulkDatabase(db: string, mib: number): void {
  const script = `
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA page_size=${PAGE}")
assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
con.execute("BEGIN")
con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)")
con.execute("CREATE TABLE log(seq INTEGER PRIMARY KEY, rows INTEGER NOT NULL)")
con.execute("INSERT INTO log VALUES (0, 0)")
con.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
con.executemany("INSERT INTO bulk(v) VALUES (?)", ((os.urandom(3000),) for _ in range(int(sys.argv[2]))))
con.execute("COMMIT")
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
con.close()
`;
  const rows = Math.ceil((mib * 1048576) / PAGE);
  const r = spawnSync("python3", ["-c", script, db, String(rows)], { encoding: "utf8" });
  assert.equal(r.status, 0, `python failed: ${r.stderr}`);
}

/**
 * Pages in which two database images differ, counting every page only one
 * of them has: exactly what a heal from `before` to `after` must ship.
 */
export function differingPages(before: string, after: string): number[] {
  const a = fs.readFileSync(before);
  const b = fs.readFileSync(after);
  const pages = Math.max(a.length, b.length) / PAGE;
  const out: number[] = [];
  for (let p = 0; p < pages; p++) {
    const at = p * PAGE;
    if (at + PAGE > b.length) continue; // gone from the new image: a truncation, not a page to ship
    if (at + PAGE > a.length || !a.subarray(at, at + PAGE).equals(b.subarray(at, at + PAGE))) out.push(p + 1);
  }
  return out;
}

/** True for walship's warn line that reports a heal. */
export const isHealLine = (l: LogLine): boolean => l.level === "warn" && /healed by shipping/.test(l.message);

/** The highest txid the journal of a cache directory records. */
export function journalTxid(cacheDir: string): number {
  let txid = 0;
  for (const line of fs.readFileSync(path.join(cacheDir, "journal"), "utf8").split("\n")) {
    if (!line) continue;
    try {
      const rec = JSON.parse(line);
      if (rec.t === "object") txid = Math.max(txid, rec.txid);
    } catch {
      break;
    }
  }
  return txid;
}

/** The replica's one segment holding exactly `txid` (a heal is shipped alone). */
export async function segmentOf(replica: Replica, txid: number): Promise<{ generation: string; segment: SegmentEntry }> {
  for (const generation of await listGenerations(replica.storage)) {
    const segment = (await listGeneration(replica.storage, generation)).segments.find((s) =>
      s.firstTxid <= txid && s.lastTxid >= txid
    );
    if (segment) return { generation, segment };
  }
  assert.fail(`no segment holds txid ${txid}`);
}

/**
 * Waits until the replica's latest state is commit `k` of the workload and,
 * given the walship's `cacheDir`, is the last txid its journal records
 * (nothing else waits for upload); returns that txid.
 */
export async function waitForReplicaCommit(
  replica: Replica,
  dir: string,
  k: number,
  options: { cacheDir?: string; timeoutMs?: number } = {},
): Promise<number> {
  const out = path.join(dir, "probe.db");
  let txid = 0;
  await waitFor(`the replica to hold commit ${k}`, async () => {
    try {
      const r = await restoreTo(replica, out, {});
      txid = r.txid;
      if (options.cacheDir && journalTxid(options.cacheDir) !== txid) return false;
      return (await workloadState(out)).k === k;
    } catch {
      return false;
    }
  }, options.timeoutMs ?? 30_000, 100);
  fs.rmSync(out, { force: true });
  return txid;
}

/**
 * Runs the workload writer for `transactions` commits with a TRUNCATE
 * checkpoint every `truncateEvery` (the WAL starts over each time), then
 * closes it: the database file alone then holds the state. No pause between
 * commits unless `sleepMs` says so.
 */
export async function writeBatch(
  db: string,
  options: { seed: number; side: string; transactions: number; truncateEvery?: number; sleepMs?: [number, number] },
): Promise<WriterDone> {
  const writer = await PythonWriter.start(db, {
    seed: options.seed,
    side: options.side,
    maxTransactions: options.transactions,
    truncateEvery: options.truncateEvery,
    sleepMs: options.sleepMs ?? [0, 0],
  });
  try {
    const done = await writer.done();
    await writer.close();
    return done;
  } finally {
    writer.dispose();
  }
}
