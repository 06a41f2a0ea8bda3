/**
 * Fixtures for the WAL engine tests: real SQLite writers (the runtime's own
 * SQLite, Python's sqlite3 and the sqlite3 command line) driven through the
 * same list of steps, SQLite itself as the oracle for what a WAL holds, and
 * a reference checksum written the slow, obvious way with DataView so the
 * fast one in src/ has something independent to be compared with.
 *
 * A WAL survives only while a connection is open (closing the last one
 * checkpoints and deletes it), so every writer copies db, -wal and -shm from
 * inside its session, with `wal_autocheckpoint=0`.
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import type { ObservedTransaction } from "../src/capture/wal_follower.ts";
import type { WalPosition } from "../src/sqlite/wal_scanner.ts";
import { openSqlite } from "./_runtime.ts";
import { between, prng } from "./_util.ts";

/** Which real SQLite writes a session. */
export type Writer = "runtime" | "python" | "cli";

/** One step of a writing session. */
export type Step =
  /** BEGIN, the statements, COMMIT; then `PRAGMA page_count` is recorded. */
  | { tx: string[] }
  /** One statement; its rows (as arrays of values) are recorded. */
  | { sql: string }
  /** Copies db, -wal and -shm (those present) into this directory, connection still open. */
  | { copy: string }
  /** SIGKILLs the writer right here (Python only): nothing is closed or checkpointed. */
  | { kill: true };

/** A writing session: WAL mode, no automatic checkpoints. */
export interface Session {
  pageSize: number;
  /** `PRAGMA cache_size` in pages; small values make big transactions spill to the WAL. */
  cacheSize?: number;
  steps: Step[];
}

/** What a session recorded. */
export interface SessionResult {
  /** `PRAGMA page_count` after each `tx` step, in order. */
  pageCounts: number[];
  /** Rows of each `sql` step, in order. */
  rows: unknown[][][];
}

/** The file name every fixture database has inside its directory. */
export const DB_NAME = "app.db";
export const WAL_HEADER = 32;
export const FRAME_HEADER = 24;

/** The table every standard session writes: each row tagged with its transaction. */
export const CREATE_TABLE =
  "CREATE TABLE t(id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, v BLOB NOT NULL)";

/** `n` bytes from a seeded {@linkcode prng}. */
export function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rand() & 0xff;
  return out;
}

function hex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** `rows` INSERTs of random blobs (sizes in [minSize, maxSize]) tagged with transaction `tx`. */
export function insertRows(
  rand: () => number,
  tx: number,
  rows: number,
  minSize: number,
  maxSize = minSize,
): string[] {
  const out: string[] = [];
  for (let i = 0; i < rows; i++) {
    const blob = randomBytes(rand, between(rand, minSize, maxSize));
    out.push(`INSERT INTO t(tx, v) VALUES (${tx}, X'${hex(blob)}')`);
  }
  return out;
}

/**
 * CREATE TABLE, then `count` transactions of `rows` rows each (tagged 1..count).
 * After transaction step i (0 = the CREATE) the table holds i * rows rows.
 */
export function standardSteps(
  seed: number,
  count: number,
  rows: number,
  minSize: number,
  maxSize = minSize,
): Step[] {
  const rand = prng(seed);
  const steps: Step[] = [{ tx: [CREATE_TABLE] }];
  for (let i = 1; i <= count; i++) steps.push({ tx: insertRows(rand, i, rows, minSize, maxSize) });
  return steps;
}

/** An INSERT of `n` rows of `size` random bytes in one statement (the writer's own randomblob). */
export function bulkInsert(tx: number, n: number, size: number): string {
  return `INSERT INTO t(tx, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${n}) ` +
    `SELECT ${tx}, randomblob(${size}) FROM c`;
}

function pragmas(session: Session): string[] {
  const list = [
    `PRAGMA page_size=${session.pageSize}`,
    "PRAGMA journal_mode=WAL",
    "PRAGMA wal_autocheckpoint=0",
  ];
  if (session.cacheSize !== undefined) list.push(`PRAGMA cache_size=${session.cacheSize}`);
  return list;
}

/** Runs `session` against the database at `db` (created if absent) with `writer`. */
export async function runSession(
  writer: Writer,
  db: string,
  session: Session,
): Promise<SessionResult> {
  fs.mkdirSync(path.dirname(db), { recursive: true });
  for (const step of session.steps) {
    if ("copy" in step) fs.mkdirSync(step.copy, { recursive: true });
  }
  if (writer === "runtime") return await runtimeSession(db, session);
  if (writer === "python") return pythonSession(db, session);
  return cliSession(db, session);
}

function copyLive(db: string, dir: string): void {
  for (const suffix of ["", "-wal", "-shm"]) {
    if (fs.existsSync(db + suffix)) fs.copyFileSync(db + suffix, path.join(dir, DB_NAME + suffix));
  }
}

async function runtimeSession(db: string, session: Session): Promise<SessionResult> {
  const result: SessionResult = { pageCounts: [], rows: [] };
  const con = await openSqlite(db);
  try {
    for (const p of pragmas(session)) con.all(p);
    for (const step of session.steps) {
      if ("tx" in step) {
        con.exec("BEGIN");
        for (const s of step.tx) con.exec(s);
        con.exec("COMMIT");
        result.pageCounts.push(Number(Object.values(con.all("PRAGMA page_count")[0])[0]));
      } else if ("sql" in step) {
        result.rows.push(con.all(step.sql).map((r) => Object.values(r as object)));
      } else if ("copy" in step) {
        copyLive(db, step.copy);
      } else {
        throw new Error("the runtime writer cannot kill itself: use the python writer");
      }
    }
  } finally {
    con.close();
  }
  return result;
}

const PYTHON_WRITER = `
import json, os, shutil, signal, sqlite3, sys
spec = json.load(sys.stdin)
db = spec["db"]
con = sqlite3.connect(db, isolation_level=None)
for p in spec["pragmas"]:
    con.execute(p).fetchall()
def out(o):
    sys.stdout.write(json.dumps(o) + "\\n")
    sys.stdout.flush()
for step in spec["steps"]:
    if "tx" in step:
        con.execute("BEGIN")
        for s in step["tx"]:
            con.execute(s)
        con.execute("COMMIT")
        out({"pc": con.execute("PRAGMA page_count").fetchone()[0]})
    elif "sql" in step:
        out({"rows": [list(r) for r in con.execute(step["sql"]).fetchall()]})
    elif "copy" in step:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                shutil.copyfile(db + suffix, os.path.join(step["copy"], "${DB_NAME}" + suffix))
    elif "kill" in step:
        os.kill(os.getpid(), signal.SIGKILL)
con.close()
`;

function pythonSession(db: string, session: Session): SessionResult {
  const spec = { db, pragmas: pragmas(session), steps: session.steps };
  const r = spawnSync("python3", ["-c", PYTHON_WRITER], {
    input: JSON.stringify(spec),
    encoding: "utf8",
    maxBuffer: 1 << 26,
  });
  const killed = session.steps.some((s) => "kill" in s);
  if (killed ? r.signal !== "SIGKILL" : r.status !== 0) {
    throw new Error(`python writer failed (status ${r.status}, signal ${r.signal}): ${r.stderr}`);
  }
  const result: SessionResult = { pageCounts: [], rows: [] };
  for (const line of r.stdout.split("\n")) {
    if (!line) continue;
    const o = JSON.parse(line);
    if ("pc" in o) result.pageCounts.push(o.pc);
    else result.rows.push(o.rows);
  }
  return result;
}

function cliSession(db: string, session: Session): SessionResult {
  const lines = [".bail on", ".mode json", ...pragmas(session).map((p) => p + ";")];
  for (const step of session.steps) {
    if ("tx" in step) {
      lines.push(".print @@pc", "BEGIN;", ...step.tx.map((s) => s + ";"), "COMMIT;");
      lines.push("SELECT page_count FROM pragma_page_count();");
    } else if ("sql" in step) {
      lines.push(".print @@rows", step.sql + ";");
    } else if ("copy" in step) {
      for (const suffix of ["", "-wal", "-shm"]) {
        lines.push(`.system cp ${db}${suffix} ${path.join(step.copy, DB_NAME + suffix)}`);
      }
    } else {
      throw new Error("the sqlite3 CLI writer cannot kill itself: use the python writer");
    }
  }
  const out = sqlite3(db, lines.join("\n") + "\n");
  const result: SessionResult = { pageCounts: [], rows: [] };
  const records: { kind: string; text: string }[] = [];
  for (const line of out.split("\n")) {
    if (line === "@@pc" || line === "@@rows") records.push({ kind: line, text: "" });
    else if (records.length > 0) records.at(-1)!.text += line + "\n";
  }
  for (const rec of records) {
    const rows = (rec.text.trim() ? JSON.parse(rec.text) : []) as object[];
    const values = rows.map((r) => Object.values(r));
    if (rec.kind === "@@pc") result.pageCounts.push(Number(values[0][0]));
    else result.rows.push(values);
  }
  return result;
}

/** Runs the sqlite3 command line on `db` with `sql` on stdin; throws with its stderr on failure. */
export function sqlite3(db: string, sql: string): string {
  const r = spawnSync("sqlite3", ["-batch", db], {
    input: sql,
    encoding: "utf8",
    maxBuffer: 1 << 28,
  });
  if (r.status !== 0 || r.stderr) {
    throw new Error(`sqlite3 failed (status ${r.status}): ${r.stderr}`);
  }
  return r.stdout;
}

/** The files of a database directory, read into memory. */
export interface DbFiles {
  /** Path of the database file. */
  db: string;
  dbFile: Uint8Array;
  /** The -wal bytes; empty when absent. */
  wal: Uint8Array;
  /** The -shm bytes; null when absent. */
  shm: Uint8Array | null;
}

/** Reads `dir/app.db` and its -wal and -shm. */
export function readDbFiles(dir: string): DbFiles {
  const db = path.join(dir, DB_NAME);
  const read = (p: string) => (fs.existsSync(p) ? new Uint8Array(fs.readFileSync(p)) : null);
  return {
    db,
    dbFile: read(db)!,
    wal: read(db + "-wal") ?? new Uint8Array(0),
    shm: read(db + "-shm"),
  };
}

/** Writes a database file and a WAL (no -shm, as after a crash) into a fresh directory under `parent`. */
export function placeDb(parent: string, dbFile: Uint8Array, wal: Uint8Array | null): string {
  const dir = fs.mkdtempSync(path.join(parent, "db-"));
  const db = path.join(dir, DB_NAME);
  fs.writeFileSync(db, dbFile);
  if (wal) fs.writeFileSync(db + "-wal", wal);
  return db;
}

/** What SQLite itself sees when it opens a database and recovers its WAL. */
export interface SqliteView {
  /** Frames SQLite's recovery accepted: `PRAGMA wal_checkpoint` reports them as the log size. */
  log: number;
  /** Rows of table t, or null when SQLite sees no table t. */
  rows: number | null;
  /** Highest transaction tag in t (-1 when empty), or null without table t. */
  maxTx: number | null;
}

const PYTHON_VIEW = `
import json, sqlite3, sys
res = []
for path in sys.argv[1:]:
    con = sqlite3.connect(path, isolation_level=None)
    has = con.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()[0]
    row = con.execute("SELECT count(*), coalesce(max(tx), -1) FROM t").fetchone() if has else None
    log = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    con.close()
    res.append({"log": log, "rows": row[0] if row else None, "maxTx": row[1] if row else None})
print(json.dumps(res))
`;

/**
 * Opens each database (its WAL beside it, no -shm: SQLite recovers the WAL
 * from scratch) with Python's sqlite3 and reports what SQLite sees. The
 * databases are changed (checkpointed): pass copies.
 */
export function sqliteViews(dbs: string[]): SqliteView[] {
  if (dbs.length === 0) return [];
  const r = spawnSync("python3", ["-c", PYTHON_VIEW, ...dbs], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`python reader failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** {@linkcode sqliteViews} for one database file and WAL, placed in a fresh directory under `parent`. */
export function sqliteView(parent: string, dbFile: Uint8Array, wal: Uint8Array | null): SqliteView {
  return sqliteViews([placeDb(parent, dbFile, wal)])[0];
}

// ---- The WAL format, written independently of src/ (slow and obvious) ----

/** Byte offset of 1-based frame `k`. */
export function frameAt(k: number, pageSize: number): number {
  return WAL_HEADER + (k - 1) * (FRAME_HEADER + pageSize);
}

export function u32be(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(offset, false);
}

export function u32le(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(offset, true);
}

/** SQLite's WAL checksum, word by word through a DataView. */
export function referenceChecksum(
  s: readonly [number, number],
  bytes: Uint8Array,
  offset: number,
  length: number,
  bigEndian: boolean,
): [number, number] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let s0 = s[0];
  let s1 = s[1];
  for (let i = offset; i < offset + length; i += 8) {
    s0 = (s0 + v.getUint32(i, !bigEndian) + s1) >>> 0;
    s1 = (s1 + v.getUint32(i + 4, !bigEndian) + s0) >>> 0;
  }
  return [s0, s1];
}

/** A frame as the reference walk sees it. */
export interface RefFrame {
  index: number;
  offset: number;
  pageNumber: number;
  commitSize: number;
  /** The chain after this frame, as stored in its header. */
  checksum: [number, number];
}

/** The reference walk: the frames that pass SQLite's validity test, from frame 1. */
export function referenceFrames(
  wal: Uint8Array,
): { pageSize: number; bigEndian: boolean; frames: RefFrame[] } {
  const magic = u32be(wal, 0);
  const bigEndian = (magic & 1) === 1;
  const pageSize = u32be(wal, 8);
  const salt1 = u32be(wal, 16);
  const salt2 = u32be(wal, 20);
  let chain: [number, number] = [u32be(wal, 24), u32be(wal, 28)];
  const frames: RefFrame[] = [];
  for (let k = 1;; k++) {
    const off = frameAt(k, pageSize);
    if (off + FRAME_HEADER + pageSize > wal.length) break;
    if (u32be(wal, off + 8) !== salt1 || u32be(wal, off + 12) !== salt2) break;
    if (u32be(wal, off) === 0) break;
    chain = referenceChecksum(chain, wal, off, 8, bigEndian);
    chain = referenceChecksum(chain, wal, off + FRAME_HEADER, pageSize, bigEndian);
    if (chain[0] !== u32be(wal, off + 16) || chain[1] !== u32be(wal, off + 20)) break;
    frames.push({
      index: k,
      offset: off,
      pageNumber: u32be(wal, off),
      commitSize: u32be(wal, off + 4),
      checksum: chain,
    });
  }
  return { pageSize, bigEndian, frames };
}

/**
 * The same WAL with checksums in the other byte order: new magic, header
 * checksum and the whole chain of its valid frames recomputed. Frames after
 * the valid ones are left as they were.
 */
export function rewriteByteOrder(wal: Uint8Array, bigEndian: boolean): Uint8Array {
  const { frames, pageSize } = referenceFrames(wal);
  const out = wal.slice();
  const v = new DataView(out.buffer);
  v.setUint32(0, bigEndian ? 0x377f0683 : 0x377f0682);
  let chain = referenceChecksum([0, 0], out, 0, 24, bigEndian);
  v.setUint32(24, chain[0]);
  v.setUint32(28, chain[1]);
  for (const f of frames) {
    chain = referenceChecksum(chain, out, f.offset, 8, bigEndian);
    chain = referenceChecksum(chain, out, f.offset + FRAME_HEADER, pageSize, bigEndian);
    v.setUint32(f.offset + 16, chain[0]);
    v.setUint32(f.offset + 20, chain[1]);
  }
  return out;
}

/** A copy of `bytes` with bit `bit` of byte `offset` flipped. */
export function flipBit(bytes: Uint8Array, offset: number, bit = 0): Uint8Array {
  const out = bytes.slice();
  out[offset] ^= 1 << bit;
  return out;
}

/** The 1-based frame holding byte `offset` (0 for the WAL header). */
export function frameOfByte(offset: number, pageSize: number): number {
  return offset < WAL_HEADER
    ? 0
    : Math.floor((offset - WAL_HEADER) / (FRAME_HEADER + pageSize)) + 1;
}

/**
 * One committed WAL frame holding `page` (any page size), continuing the
 * checksum chain at `pos`: as a transaction the follower could have
 * observed at `time`, and the position after it.
 */
export function commitFrame(pos: WalPosition, pgno: number, dbSize: number, page: Uint8Array, bigEndian: boolean, time: number) {
  const frames = new Uint8Array(FRAME_HEADER + page.length);
  const v = new DataView(frames.buffer);
  v.setUint32(0, pgno);
  v.setUint32(4, dbSize);
  v.setUint32(8, pos.salt1);
  v.setUint32(12, pos.salt2);
  frames.set(page, FRAME_HEADER);
  let sum = referenceChecksum([pos.checksum1, pos.checksum2], frames, 0, 8, bigEndian);
  sum = referenceChecksum(sum, frames, FRAME_HEADER, page.length, bigEndian);
  v.setUint32(16, sum[0]);
  v.setUint32(20, sum[1]);
  const frame = pos.frame + 1;
  const tx: ObservedTransaction = {
    firstFrame: frame,
    lastFrame: frame,
    offset: 0,
    end: 0,
    pages: [pgno],
    dbSize,
    checksum1: sum[0],
    checksum2: sum[1],
    frames,
    time,
  };
  return { tx, pos: { ...pos, frame, checksum1: sum[0], checksum2: sum[1] } as WalPosition };
}
