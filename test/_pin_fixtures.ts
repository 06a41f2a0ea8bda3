/**
 * Fixtures for the pin tests (DESIGN.md, "The pin"): a Python writer that
 * commits small transactions as fast as it can and times its own TRUNCATE
 * checkpoints, a Python process that just holds a connection open (with any
 * pragmas), the sqlite3 command line, and a look at which of SQLite's lock
 * bytes someone holds, through the same FFI locks walship uses.
 *
 * The storm writer uses the workload's tables (`t`, and `log` with one
 * `(k, count(*) FROM t)` row per commit), so `workloadState` of
 * `_replication_fixtures.ts` tells which commit any restored state is.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import process from "node:process";
import { DB_SHARED_FIRST, DB_SHARED_SIZE } from "../src/capture/pin.ts";
import { F_RDLCK, F_UNLCK, F_WRLCK, type FileLocks, loadFileLocks } from "../src/runtime.ts";
import { SHM_LOCK } from "../src/sqlite/wal_index.ts";
import { waitFor } from "./_util.ts";

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of live) c.kill("SIGKILL");
});

// ---------------------------------------------------------------- a Python process driven by stdin

/**
 * A Python script run with one JSON argument, printing `READY`, `DONE <json>`
 * and `CLOSED` lines and waiting for lines on stdin between its steps.
 */
class PythonProcess {
  readonly child: ChildProcess;
  #out = "";
  #err = "";
  #lines: string[] = [];
  readonly exited: Promise<number | null>;

  constructor(script: string, arg: unknown) {
    this.child = spawn("python3", ["-c", script, JSON.stringify(arg)], { stdio: ["pipe", "pipe", "pipe"] });
    live.add(this.child);
    this.child.stdout!.on("data", (d) => {
      this.#out += d;
      let nl: number;
      while ((nl = this.#out.indexOf("\n")) >= 0) {
        this.#lines.push(this.#out.slice(0, nl));
        this.#out = this.#out.slice(nl + 1);
      }
    });
    this.child.stderr!.on("data", (d) => (this.#err += d));
    this.exited = new Promise((resolve) =>
      this.child.on("close", (code) => {
        live.delete(this.child);
        resolve(code);
      })
    );
  }

  /** Waits for a stdout line starting with `prefix`; returns the rest of it. */
  line(prefix: string, timeoutMs = 60_000): Promise<string> {
    return waitFor(`"${prefix}" from the Python process`, () => {
      const l = this.#lines.find((x) => x.startsWith(prefix));
      if (l !== undefined) return { rest: l.slice(prefix.length) };
      if (this.child.exitCode !== null) throw new Error(`python exited ${this.child.exitCode}: ${this.#err}`);
      return null;
    }, timeoutMs, 5).then((r) => r.rest);
  }

  send(line: string): void {
    this.child.stdin!.write(line + "\n");
  }

  /** Sends `close`, waits for the exit, and asserts it was clean. */
  async close(): Promise<void> {
    if (this.child.exitCode === null) {
      this.send("close");
      this.child.stdin!.end();
    }
    const code = await this.exited;
    assert.equal(code, 0, `python failed: ${this.#err}`);
  }

  dispose(): void {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
}

// ---------------------------------------------------------------- the storm writer

/** What {@linkcode StormWriter} does. */
export interface StormOptions {
  seed: number;
  /** Commits to make, back to back. */
  transactions: number;
  /** `PRAGMA wal_checkpoint(TRUNCATE)` after every this many commits; 0: only after the last one. */
  truncateEvery: number;
  /** `PRAGMA wal_autocheckpoint`; default 10. */
  autocheckpoint?: number;
  /** `PRAGMA busy_timeout`, ms; default 5000. */
  busyTimeout?: number;
  /** End the loop at the first checkpoint that comes back busy (a broken pin then fails fast). */
  stopOnBusy?: boolean;
  /** Pause after each commit, ms: [min, max]; default none (as fast as it can). */
  pauseMs?: [number, number];
  /** Size of each inserted or updated blob, bytes: [min, max]; default [16, 600]. */
  blobBytes?: [number, number];
  /** `PRAGMA synchronous`; default SQLite's (FULL: an fsync per commit). */
  synchronous?: "NORMAL" | "FULL";
}

/** One commit as the writer saw it. */
export interface StormCommit {
  k: number;
  /** Rows of t after the commit. */
  rows: number;
  /** Unix ms just before BEGIN, and right after COMMIT returned. */
  started: number;
  committed: number;
}

/** One timed `PRAGMA wal_checkpoint(TRUNCATE)`. */
export interface TimedCheckpoint {
  /** The commit it followed. */
  after: number;
  /** (busy, log, checkpointed). */
  result: [number, number, number];
  ms: number;
}

/** How the storm went. */
export interface StormResult {
  commits: StormCommit[];
  checkpoints: TimedCheckpoint[];
  /** The TRUNCATE checkpoint after the last commit. */
  final: TimedCheckpoint;
  /** WAL restarts the writer saw (the salts in the WAL header changed after a commit). */
  restarts: number;
  /** The largest the WAL file was right after a commit, bytes. */
  maxWalBytes: number;
}

const STORM = String.raw`
import json, os, random, sqlite3, sys, time
spec = json.loads(sys.argv[1])
rnd = random.Random(spec["seed"])
def out(s):
    sys.stdout.write(s + "\n"); sys.stdout.flush()
con = sqlite3.connect(spec["db"], isolation_level=None)
con.execute("PRAGMA busy_timeout=%d" % spec.get("busyTimeout", 5000)).fetchall()
assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
con.execute("PRAGMA wal_autocheckpoint=%d" % spec.get("autocheckpoint", 10)).fetchall()
if spec.get("synchronous"):
    con.execute("PRAGMA synchronous=" + spec["synchronous"]).fetchall()
con.execute("BEGIN IMMEDIATE")
con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)")
con.execute("CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY, rows INTEGER NOT NULL)")
con.execute("INSERT OR IGNORE INTO log VALUES (0, 0)")
con.execute("COMMIT")
out("READY")
sys.stdin.readline()
def timed_truncate(after):
    t0 = time.perf_counter()
    r = list(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    return {"after": after, "result": r, "ms": (time.perf_counter() - t0) * 1000}
blob = spec.get("blobBytes", [16, 600])
commits = []
checkpoints = []
restarts = 0
salts = None
max_wal = 0
def look_at_wal():
    global restarts, salts, max_wal
    with open(spec["db"] + "-wal", "rb") as f:
        head = f.read(32)
        max_wal = max(max_wal, os.fstat(f.fileno()).st_size)
    if len(head) == 32:
        if salts is not None and head[16:24] != salts:
            restarts += 1
        salts = head[16:24]
for k in range(1, spec["transactions"] + 1):
    started = time.time() * 1000
    con.execute("BEGIN IMMEDIATE")
    r = rnd.random()
    if r < 0.6 or k < 10:
        for _ in range(rnd.randint(1, 3)):
            con.execute("INSERT INTO t(k, v) VALUES (?, randomblob(?))", (k, rnd.randint(*blob)))
    elif r < 0.85:
        con.execute("UPDATE t SET k = ?, v = randomblob(?) WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 2)", (k, rnd.randint(*blob)))
    else:
        con.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 1)")
    con.execute("INSERT INTO log VALUES (?, (SELECT count(*) FROM t))", (k,))
    con.execute("COMMIT")
    committed = time.time() * 1000
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    commits.append({"k": k, "rows": rows, "started": started, "committed": committed})
    look_at_wal()
    if spec.get("pauseMs"):
        time.sleep(rnd.uniform(*spec["pauseMs"]) / 1000)
    if spec["truncateEvery"] and k % spec["truncateEvery"] == 0:
        c = timed_truncate(k)
        checkpoints.append(c)
        if c["result"][0] != 0 and spec.get("stopOnBusy"):
            break
final = timed_truncate(len(commits))
out("DONE " + json.dumps({"commits": commits, "checkpoints": checkpoints, "final": final, "restarts": restarts, "maxWalBytes": max_wal}))
sys.stdin.readline()
con.close()
out("CLOSED")
`;

/**
 * A Python process committing small random transactions back to back, with
 * a timed TRUNCATE checkpoint every few commits: the app that checkpoints
 * aggressively, which a pin must not stall.
 *
 * @example
 * ```ts
 * const w = await StormWriter.start(db, { seed, transactions: 800, truncateEvery: 20 });
 * w.go();
 * const storm = await w.done();
 * await w.close();
 * ```
 */
export class StormWriter {
  #p: PythonProcess;

  private constructor(db: string, options: StormOptions) {
    this.#p = new PythonProcess(STORM, { db, ...options });
  }

  /** Starts the writer; resolves once the tables exist (commit 0), before the storm. */
  static async start(db: string, options: StormOptions): Promise<StormWriter> {
    const w = new StormWriter(db, options);
    await w.#p.line("READY", 20_000);
    return w;
  }

  /** Starts the storm. */
  go(): void {
    this.#p.send("go");
  }

  /** Waits for the storm and its final checkpoint. */
  async done(timeoutMs = 120_000): Promise<StormResult> {
    return JSON.parse(await this.#p.line("DONE ", timeoutMs));
  }

  /** Closes the connection and waits for the process to exit. */
  close(): Promise<void> {
    return this.#p.close();
  }

  dispose(): void {
    this.#p.dispose();
  }
}

// ---------------------------------------------------------------- a connection held open

const HOLDER = String.raw`
import json, sqlite3, sys
spec = json.loads(sys.argv[1])
con = sqlite3.connect(spec["db"], isolation_level=None, timeout=0.1)
for sql in spec["sql"]:
    con.execute(sql).fetchall()
print("READY", flush=True)
sys.stdin.readline()
con.close()
print("CLOSED", flush=True)
`;

/**
 * A Python process that opens `db`, runs `sql` (pragmas, writes) and keeps
 * the connection open until {@linkcode ConnectionHolder.close}.
 */
export class ConnectionHolder {
  #p: PythonProcess;

  private constructor(db: string, sql: string[]) {
    this.#p = new PythonProcess(HOLDER, { db, sql });
  }

  static async open(db: string, sql: string[]): Promise<ConnectionHolder> {
    const h = new ConnectionHolder(db, sql);
    await h.#p.line("READY", 20_000);
    return h;
  }

  /** Closes the connection and waits for the process to exit. */
  async close(): Promise<void> {
    await this.#p.close();
  }

  dispose(): void {
    this.#p.dispose();
  }
}

// ---------------------------------------------------------------- the sqlite3 command line

/** Runs `sql` through the sqlite3 command line on `db` (a process that opens, runs and exits); returns stdout. */
export function sqlite3Cli(db: string, sql: string): string {
  const r = spawnSync("sqlite3", [db], { input: sql, encoding: "utf8" });
  assert.equal(r.status, 0, `sqlite3 failed: ${r.stderr}`);
  assert.equal(r.stderr, "", `sqlite3 complained: ${r.stderr}`);
  return r.stdout;
}

// ---------------------------------------------------------------- SQLite's lock bytes

/** Who holds what, seen from outside: the lock type a write lock would run into, or F_UNLCK. */
export interface LockView {
  /** READ_LOCK(0..4), bytes 123..127 of -shm. */
  readLocks: number[];
  /** DMS, byte 128 of -shm. */
  dms: number;
  /** The database file's SHARED range. */
  dbShared: number;
  /** WRITE and CKPT, bytes 120 and 121 of -shm. */
  write: number;
  ckpt: number;
}

export { F_RDLCK, F_UNLCK, F_WRLCK };

/** The FFI locks, or a failed assertion when this runtime has none. */
export async function fileLocks(): Promise<FileLocks> {
  const locks = await loadFileLocks();
  assert.ok(typeof locks !== "string", `FFI locks unavailable: ${locks}`);
  return locks;
}

/**
 * Asks the kernel (F_OFD_GETLK) which of SQLite's lock bytes another holder
 * has: for each byte, the type of lock a write lock there would run into.
 */
export async function lockView(db: string): Promise<LockView> {
  const locks = await fileLocks();
  const shm = locks.open(`${db}-shm`);
  const dbf = locks.open(db);
  assert.ok(shm.fd >= 0 && dbf.fd >= 0, `cannot open ${db} and its -shm`);
  try {
    const at = (fd: number, start: number, len = 1) => locks.testLock(fd, F_WRLCK, start, len);
    return {
      readLocks: [0, 1, 2, 3, 4].map((i) => at(shm.fd, SHM_LOCK.READ0 + i)),
      dms: at(shm.fd, SHM_LOCK.DMS),
      dbShared: at(dbf.fd, DB_SHARED_FIRST, DB_SHARED_SIZE),
      write: at(shm.fd, SHM_LOCK.WRITE),
      ckpt: at(shm.fd, SHM_LOCK.CKPT),
    };
  } finally {
    locks.close(shm.fd);
    locks.close(dbf.fd);
  }
}

// ---------------------------------------------------------------- numbers

/** The q-quantile (0..1) of `xs`. */
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}
