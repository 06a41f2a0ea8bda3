/**
 * Fixtures for the replicate → restore integration tests: fresh replicas on
 * both backends (a real s3rver bucket or a directory), `walship` run as a
 * real subprocess of the current runtime, a Python writer process that keeps
 * committing until told to stop, the same workload written in-process with
 * the runtime's own SQLite, a Log that records, and the checks every test
 * ends with (restored bytes equal the source, integrity_check, the replica's
 * txids contiguous).
 *
 * Every workload transaction ends by appending `(k, count(*) FROM t)` to the
 * table `log`, so any restored state says which commit it is (k = max(seq))
 * and proves itself whole (its own count of t equals the one recorded).
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";
import type { Log, LogFields } from "../src/log.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { decodeObject } from "../src/replica/object_format.ts";
import { decodeSegmentBody } from "../src/replica/segment.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { zstdDecompress } from "../src/replica/zstd.ts";
import type { GenerationInfo } from "../src/restore/describe.ts";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import type { RestoreTarget } from "../src/restore/plan.ts";
import { restoreDatabase, type RestoreResult } from "../src/restore/restore.ts";
import { openSqlite, type SqliteConnection } from "./_runtime.ts";
import { type S3Server, startS3Server } from "./_s3_server.ts";
import { between, spawnWalship, waitFor, withTempDir } from "./_util.ts";

// ---------------------------------------------------------------- basics

/** A seed from WALSHIP_TEST_SEED or the clock; tests print it in their failure messages. */
export function testSeed(): number {
  const fixed = Number(process.env.WALSHIP_TEST_SEED);
  return Number.isInteger(fixed) && fixed > 0 ? fixed : (Date.now() % 1_000_000_007) >>> 0;
}

// ---------------------------------------------------------------- replicas

export type BackendName = "s3" | "file";
export const BACKENDS: BackendName[] = ["s3", "file"];

/** A fresh, empty replica. */
export interface Replica {
  backend: BackendName;
  /** The URL `walship` takes. */
  url: string;
  /** Environment a subprocess needs for it (S3 credentials). */
  env: Record<string, string>;
  storage: ReplicaStorage;
}

let shared: Promise<S3Server> | undefined;

/** The S3 server this test file shares (started on first use). */
export function sharedS3(): Promise<S3Server> {
  return (shared ??= startS3Server());
}

/** Stops the shared S3 server, if one was started. */
export async function closeSharedS3(): Promise<void> {
  if (shared) await (await shared).close();
  shared = undefined;
}

let buckets = 0;

/** A new bucket on `server` (default: the shared one), or a new directory inside `dir`. */
export async function freshReplica(backend: BackendName, dir: string, server?: S3Server): Promise<Replica> {
  if (backend === "file") {
    const url = pathToFileURL(path.join(dir, "replica")).href;
    return { backend, url, env: {}, storage: openReplica(url) };
  }
  const s3 = server ?? await sharedS3();
  const bucket = `rr-${++buckets}-${randomBytes(4).toString("hex")}`;
  await s3.createBucket(bucket);
  const url = s3.url(bucket, "app");
  return { backend, url, env: s3.env, storage: openReplica(url, { env: s3.env }) };
}

// ---------------------------------------------------------------- logs

/** A log line as walship wrote it. */
export interface LogLine {
  level: string;
  message: string;
  fields: LogFields;
}

/** A {@linkcode Log} that keeps every line (and prints them with WALSHIP_TEST_ECHO). */
export function recordingLog(): Log & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (message: string, fields: LogFields = {}) => {
    lines.push({ level, message, fields });
    if (process.env.WALSHIP_TEST_ECHO) console.error(`[${level}] ${message} ${JSON.stringify(fields)}`);
  };
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** Parses the JSON log lines a `walship` subprocess wrote on stderr; other lines are kept as messages. */
export function parseLogLines(stderr: string): LogLine[] {
  return stderr.split("\n").filter((l) => l.trim() !== "").map((l) => {
    try {
      const o = JSON.parse(l);
      const { message, level, levelId: _i, time: _t, _logMeta, ...fields } = o;
      return { level: String(level).toLowerCase(), message: String(message), fields };
    } catch {
      return { level: "raw", message: l, fields: {} };
    }
  });
}

// ---------------------------------------------------------------- walship subprocess

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** A running `walship` subprocess. */
export class WalshipProcess {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  readonly exited: Promise<{ code: number | null; signal: string | null }>;

  constructor(args: string[], env: Record<string, string> = {}, wrap?: string[]) {
    this.child = spawnWalship(args, { env, wrap });
    children.add(this.child);
    this.child.stdout!.on("data", (d) => (this.stdout += d));
    this.child.stderr!.on("data", (d) => {
      this.stderr += d;
      if (process.env.WALSHIP_TEST_ECHO) process.stderr.write(String(d));
    });
    this.exited = new Promise((resolve, reject) => {
      this.child.on("error", reject);
      this.child.on("close", (code, signal) => {
        children.delete(this.child);
        resolve({ code, signal });
      });
    });
  }

  /** The log lines written so far. */
  get log(): LogLine[] {
    return parseLogLines(this.stderr);
  }

  /** Waits for a log line whose message matches `re`. */
  waitForLog(re: RegExp, timeoutMs = 20_000): Promise<LogLine> {
    return waitFor(
      () => `a walship log line matching ${re}; stderr so far:\n${this.stderr}`,
      () => this.log.find((l) => re.test(l.message)),
      timeoutMs,
    );
  }

  /**
   * Sends `signal` by pid: Deno's `child.kill()` reports a child that traps
   * the signal and exits 0 as killed by that signal.
   */
  signal(signal: "SIGKILL" | "SIGTERM" | "SIGINT"): void {
    if (this.child.exitCode === null && this.child.signalCode === null) process.kill(this.child.pid!, signal);
  }

  /** SIGKILL, and waits until it is gone. */
  async kill(): Promise<void> {
    this.signal("SIGKILL");
    const { code, signal } = await this.exited;
    assert.equal(signal, "SIGKILL", `walship had already exited (${code}) before the SIGKILL; stderr:\n${this.stderr}`);
  }

  /** SIGTERM, and the exit code (SIGKILL and a failure after `timeoutMs`). */
  async terminate(timeoutMs = 30_000): Promise<number | null> {
    this.signal("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
    const r = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (r === "timeout") {
      this.signal("SIGKILL");
      await this.exited;
      assert.fail(`walship did not exit within ${timeoutMs} ms of SIGTERM; stderr:\n${this.stderr}`);
    }
    return r.code;
  }
}

/** Runs `walship args...` to completion. */
export async function runWalship(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = new WalshipProcess(args, env);
  const { code } = await p.exited;
  return { code, stdout: p.stdout, stderr: p.stderr };
}

/** Starts `walship replicate db url` with a short sync interval. */
export function startReplicate(
  db: string,
  replica: Replica,
  options: {
    syncInterval?: string;
    cacheDir?: string;
    extra?: string[];
    /** Added to the environment. */
    env?: Record<string, string>;
    /** A command that runs walship for us (see {@linkcode spawnWalship}). */
    wrap?: string[];
  } = {},
): WalshipProcess {
  const args = ["replicate", db, replica.url, "--sync-interval", options.syncInterval ?? "100ms"];
  if (options.cacheDir) args.push("--cache-dir", options.cacheDir);
  return new WalshipProcess([...args, ...(options.extra ?? [])], { ...replica.env, ...options.env }, options.wrap);
}

/** `walship generations --json`, parsed. */
export async function cliGenerations(replica: Replica): Promise<GenerationInfo[]> {
  const r = await runWalship(["generations", replica.url, "--json"], replica.env);
  assert.equal(r.code, 0, `walship generations failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** `walship restore -o out url [args] --json`, parsed. */
export async function cliRestore(replica: Replica, output: string, args: string[] = []): Promise<RestoreResult> {
  const r = await runWalship(["restore", "-o", output, ...args, "--json", replica.url], replica.env);
  assert.equal(r.code, 0, `walship restore ${args.join(" ")} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

// ---------------------------------------------------------------- the Python writer

/** What the workload writer does. */
export interface WorkloadOptions {
  seed: number;
  /** `PRAGMA wal_autocheckpoint`; SQLite's default (1000 pages) when absent. */
  autocheckpoint?: number;
  /** `PRAGMA wal_checkpoint(PASSIVE)` after every this many commits. */
  passiveEvery?: number;
  /** `PRAGMA wal_checkpoint(TRUNCATE)` after every this many commits. */
  truncateEvery?: number;
  /** VACUUM after these commits. */
  vacuumAt?: number[];
  /** Pause between commits, ms: [min, max]. */
  sleepMs?: [number, number];
  /** Stop by itself after this many commits. */
  maxTransactions?: number;
  /** Append "k rows" after each commit to this file. */
  side?: string;
  /** Also create, index, alter and drop extra tables. */
  schemaChanges?: boolean;
  /** End with `PRAGMA wal_checkpoint(TRUNCATE)` (the default); when false, only closing empties the WAL. */
  finalCheckpoint?: boolean;
  /** Close the connection right after the last commit (and checkpoint), without waiting for "close". */
  closeAtEnd?: boolean;
  /** Create the database, then wait for {@linkcode PythonWriter.go} before the first commit. */
  gate?: boolean;
}

/** How the writer finished: last commit, rows in t, and the final TRUNCATE checkpoint's (busy, log, checkpointed). */
export interface WriterDone {
  commits: number;
  rows: number;
  /** null when `finalCheckpoint` was false. */
  checkpoint: [number, number, number] | null;
  /** (busy, log, checkpointed) of every checkpoint the workload issued, by kind. */
  checkpoints: { passive: number[][]; truncate: number[][]; vacuums: number };
}

// The workload, in Python's sqlite3 (a separate process and another SQLite
// build than the runtime's). Commands on stdin: "go" starts a gated writer,
// "truncate" runs PRAGMA wal_checkpoint(TRUNCATE) after the next commit and
// answers "T busy log checkpointed", "stop" ends the loop (then a
// TRUNCATE checkpoint unless finalCheckpoint is false, and "DONE {...}"),
// "close" closes the connection. The side file gets "k rows ms" per commit,
// ms being the Unix time just before COMMIT: no restore observed before it
// can hold commit k.
const WORKLOAD = String.raw`
import json, random, sqlite3, sys, threading, time
spec = json.loads(sys.argv[1])
rnd = random.Random(spec["seed"])
stop = threading.Event()
close = threading.Event()
go = threading.Event()
truncates = []
def commands():
    for line in sys.stdin:
        if line.strip() == "go": go.set()
        if line.strip() == "truncate": truncates.append(1)
        if line.strip() == "stop": stop.set()
        if line.strip() == "close": close.set()
    go.set(); stop.set(); close.set()
threading.Thread(target=commands, daemon=True).start()
def out(s):
    sys.stdout.write(s + "\n"); sys.stdout.flush()
con = sqlite3.connect(spec["db"], isolation_level=None, timeout=30)
assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
if spec.get("autocheckpoint") is not None:
    con.execute("PRAGMA wal_autocheckpoint=%d" % spec["autocheckpoint"]).fetchall()
con.execute("BEGIN IMMEDIATE")
con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)")
con.execute("CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY, rows INTEGER NOT NULL)")
con.execute("INSERT OR IGNORE INTO log VALUES (0, 0)")
con.execute("COMMIT")
k = con.execute("SELECT max(seq) FROM log").fetchone()[0]
side = open(spec["side"], "a") if spec.get("side") else None
extra = []
done = {"passive": [], "truncate": [], "vacuums": 0}
def schema_change():
    r = rnd.random()
    if not extra or r < 0.35:
        name = "x%d_%d" % (k, len(extra) + rnd.randrange(10**6))
        con.execute("CREATE TABLE %s(a INTEGER PRIMARY KEY, b TEXT, c BLOB)" % name)
        for i in range(rnd.randint(1, 20)):
            con.execute("INSERT INTO %s(b, c) VALUES (?, randomblob(?))" % name, ("r%d" % rnd.randint(0, 99), rnd.randint(1, 900)))
        extra.append(name)
    elif r < 0.6:
        con.execute("CREATE INDEX IF NOT EXISTS %s_b ON %s(b)" % (extra[-1], extra[-1]))
    elif r < 0.8:
        con.execute("ALTER TABLE %s ADD COLUMN d%d_%d INTEGER DEFAULT %d" % (extra[0], k, rnd.randrange(10**6), k))
    else:
        con.execute("DROP TABLE %s" % extra.pop(rnd.randrange(len(extra))))
out("READY")
if spec.get("gate"):
    go.wait()
n = 0
lo, hi = spec.get("sleepMs", [1, 5])
while not stop.is_set() and n < spec.get("maxTransactions", 10**9):
    k += 1; n += 1
    con.execute("BEGIN IMMEDIATE")
    for _ in range(rnd.randint(1, 3)):
        r = rnd.random()
        if r < 0.5:
            for _ in range(rnd.randint(1, 4)):
                size = rnd.randint(1000, 65536) if rnd.random() < 0.06 else rnd.randint(16, 1500)
                con.execute("INSERT INTO t(k, v) VALUES (?, randomblob(?))", (k, size))
        elif r < 0.7:
            con.execute("UPDATE t SET k = ?, v = randomblob(?) WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)", (k, rnd.randint(16, 3000), rnd.randint(1, 3)))
        elif r < 0.85 or not spec.get("schemaChanges"):
            con.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)", (rnd.randint(1, 3),))
        else:
            schema_change()
    con.execute("INSERT INTO log VALUES (?, (SELECT count(*) FROM t))", (k,))
    before = int(time.time() * 1000)
    con.execute("COMMIT")
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    if side:
        side.write("%d %d %d\n" % (k, rows, before)); side.flush()
    out("C %d %d" % (k, rows))
    while truncates:
        truncates.pop()
        out("T %d %d %d" % tuple(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()))
    if spec.get("passiveEvery") and n % spec["passiveEvery"] == 0:
        done["passive"].append(list(con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()))
    if spec.get("truncateEvery") and n % spec["truncateEvery"] == 0:
        done["truncate"].append(list(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()))
    if n in spec.get("vacuumAt", []):
        con.execute("VACUUM"); done["vacuums"] += 1
    time.sleep(rnd.uniform(lo, hi) / 1000)
ck = list(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()) if spec.get("finalCheckpoint", True) else None
rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
if spec.get("closeAtEnd"):
    con.close()
out("DONE " + json.dumps({"commits": k, "rows": rows, "checkpoint": ck, "checkpoints": done}))
close.wait()
if not spec.get("closeAtEnd"):
    con.close()
out("CLOSED")
`;

/** A Python process committing the workload to a database until told to stop. */
export class PythonWriter {
  readonly child: ChildProcess;
  /** Last commit k seen, and the rows of t after it. */
  commits = 0;
  rows = 0;
  #out = "";
  #err = "";
  #done: WriterDone | null = null;
  #truncated: number[][] = [];
  #closed = false;
  #exited: Promise<number | null>;
  ready = false;

  private constructor(db: string, options: WorkloadOptions) {
    this.child = spawn("python3", ["-c", WORKLOAD, JSON.stringify({ db, ...options })], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.add(this.child);
    this.child.stdout!.on("data", (d) => {
      this.#out += d;
      let nl: number;
      while ((nl = this.#out.indexOf("\n")) >= 0) {
        const line = this.#out.slice(0, nl);
        this.#out = this.#out.slice(nl + 1);
        if (line.startsWith("C ")) {
          const [, k, rows] = line.split(" ");
          this.commits = Number(k);
          this.rows = Number(rows);
        } else if (line.startsWith("T ")) this.#truncated.push(line.slice(2).split(" ").map(Number));
        else if (line.startsWith("DONE ")) this.#done = JSON.parse(line.slice(5));
        else if (line === "CLOSED") this.#closed = true;
        else if (line === "READY") this.ready = true;
      }
    });
    this.child.stderr!.on("data", (d) => (this.#err += d));
    this.#exited = new Promise((resolve) =>
      this.child.on("close", (code) => {
        children.delete(this.child);
        resolve(code);
      })
    );
  }

  /** Starts the writer; resolves once the database exists in WAL mode with the workload's tables. */
  static async start(db: string, options: WorkloadOptions): Promise<PythonWriter> {
    const w = new PythonWriter(db, options);
    await waitFor("the Python writer to start", () => w.ready || w.#failed(), 20_000);
    return w;
  }

  /** Throws when the writer died; null otherwise. */
  #failed(): null {
    if (this.child.exitCode !== null) throw new Error(`python writer exited ${this.child.exitCode}: ${this.#err}`);
    return null;
  }

  /** Lets a writer started with `gate` begin committing. */
  go(): void {
    this.child.stdin!.write("go\n");
  }

  /** Waits until at least `n` commits happened. */
  async waitForCommits(n: number, timeoutMs = 30_000): Promise<void> {
    await waitFor(`${n} commits by the Python writer`, () => this.commits >= n || this.#failed(), timeoutMs);
  }

  /**
   * Has the running loop checkpoint with TRUNCATE after its next commit (the
   * WAL then starts over); resolves with the checkpoint's (busy, log, checkpointed).
   */
  async truncate(timeoutMs = 30_000): Promise<number[]> {
    const before = this.#truncated.length;
    this.child.stdin!.write("truncate\n");
    await waitFor("the Python writer's TRUNCATE checkpoint", () => this.#truncated.length > before || this.#failed(), timeoutMs);
    return this.#truncated[before];
  }

  /** Stops the loop (if it has not stopped by itself); the writer then checkpoints with TRUNCATE. */
  async finish(timeoutMs = 30_000): Promise<WriterDone> {
    this.child.stdin!.write("stop\n");
    return await waitFor("the Python writer to finish", () => this.#done ?? this.#failed(), timeoutMs);
  }

  /** Waits for the writer to reach maxTransactions and checkpoint. */
  async done(timeoutMs = 60_000): Promise<WriterDone> {
    return await waitFor("the Python writer to reach its last transaction", () => this.#done ?? this.#failed(), timeoutMs);
  }

  /** Closes the connection (the last one: SQLite checkpoints and deletes the WAL) and waits for the exit. */
  async close(): Promise<void> {
    this.child.stdin!.write("close\n");
    this.child.stdin!.end();
    const code = await this.#exited;
    assert.equal(code, 0, `python writer failed: ${this.#err}`);
    assert.ok(this.#closed);
  }

  /** Kills the writer if still running (cleanup after a failure). */
  dispose(): void {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
}

/** Reads the writer's side file: commit k → Unix ms just before its COMMIT. */
export function readSideTimes(file: string): Map<number, number> {
  const m = new Map<number, number>();
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (!line) continue;
    const [k, , ms] = line.split(" ").map(Number);
    m.set(k, ms);
  }
  return m;
}

/** Reads the writer's side file: commit k → rows of t after it. */
export function readSideFile(file: string): Map<number, number> {
  const m = new Map<number, number>();
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (!line) continue;
    const [k, rows] = line.split(" ").map(Number);
    m.set(k, rows);
  }
  return m;
}

// ---------------------------------------------------------------- the in-process writer

/** The workload's tables, created with the runtime's SQLite in WAL mode. */
export async function openRuntimeWriter(db: string, pragmas: string[] = []): Promise<SqliteConnection> {
  const con = await openSqlite(db);
  const mode = con.all<{ journal_mode: string }>("PRAGMA journal_mode=WAL")[0].journal_mode;
  assert.equal(mode, "wal");
  for (const p of pragmas) con.all(p);
  con.exec("BEGIN IMMEDIATE");
  con.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)");
  con.exec("CREATE TABLE log(seq INTEGER PRIMARY KEY, rows INTEGER NOT NULL)");
  con.exec("INSERT INTO log VALUES (0, 0)");
  con.exec("COMMIT");
  return con;
}

/**
 * Commit k of the workload with the runtime's SQLite: inserts (blobs up to
 * 64 KiB), updates, deletes and schema changes (create table and index,
 * alter table add column, drop table), then the log row.
 */
export function runtimeTransaction(con: SqliteConnection, rand: () => number, k: number, extra: string[]): void {
  con.exec("BEGIN IMMEDIATE");
  const ops = between(rand, 1, 3);
  for (let i = 0; i < ops; i++) {
    const r = rand() % 100;
    if (r < 50) {
      for (let j = between(rand, 1, 4); j > 0; j--) {
        const size = rand() % 100 < 6 ? between(rand, 1000, 65536) : between(rand, 16, 1500);
        con.run("INSERT INTO t(k, v) VALUES (?, randomblob(?))", k, size);
      }
    } else if (r < 68) {
      con.run(
        "UPDATE t SET k = ?, v = randomblob(?) WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)",
        k,
        between(rand, 16, 3000),
        between(rand, 1, 3),
      );
    } else if (r < 82) {
      con.run("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)", between(rand, 1, 3));
    } else {
      const s = rand() % 100;
      if (extra.length === 0 || s < 35) {
        const name = `x${k}_${extra.length}_${rand() % 1_000_000}`;
        con.exec(`CREATE TABLE ${name}(a INTEGER PRIMARY KEY, b TEXT, c BLOB)`);
        for (let j = between(rand, 1, 20); j > 0; j--) {
          con.run(`INSERT INTO ${name}(b, c) VALUES (?, randomblob(?))`, `r${rand() % 100}`, between(rand, 1, 900));
        }
        extra.push(name);
      } else if (s < 60) {
        const name = extra.at(-1)!;
        con.exec(`CREATE INDEX IF NOT EXISTS ${name}_b ON ${name}(b)`);
      } else if (s < 80) {
        con.exec(`ALTER TABLE ${extra[0]} ADD COLUMN d${k}_${rand() % 1_000_000} INTEGER DEFAULT ${k}`);
      } else {
        con.exec(`DROP TABLE ${extra.splice(rand() % extra.length, 1)[0]}`);
      }
    }
  }
  con.run("INSERT INTO log VALUES (?, (SELECT count(*) FROM t))", k);
  con.exec("COMMIT");
}

/** `PRAGMA wal_checkpoint(mode)` on `con`: [busy, log, checkpointed]. */
export function checkpoint(con: SqliteConnection, mode: "PASSIVE" | "TRUNCATE"): number[] {
  return Object.values(con.all(`PRAGMA wal_checkpoint(${mode})`)[0] as object).map(Number);
}

// ---------------------------------------------------------------- restoring and comparing

/** Restores `replica` (in-process) to `output` at `target`. */
export function restoreTo(replica: Replica, output: string, target: RestoreTarget = {}): Promise<RestoreResult> {
  return restoreDatabase({ storage: replica.storage, output, target, force: true });
}

/** Asserts two files hold the same bytes, naming the first page that differs. */
export function assertSameFile(actual: string, expected: string, what = "restored database"): void {
  const a = fs.readFileSync(actual);
  const b = fs.readFileSync(expected);
  if (a.equals(b)) return;
  const pageSize = b.length >= 18 ? (b.readUInt16BE(16) === 1 ? 65536 : b.readUInt16BE(16)) : 4096;
  let i = 0;
  while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
  assert.fail(
    `${what} differs from the source: ${a.length} vs ${b.length} bytes, first difference at byte ${i} ` +
      `(page ${Math.floor(i / pageSize) + 1})`,
  );
}

/** Runs `fn` on a connection to a copy of `db` (the runtime's SQLite), so the file itself is never touched. */
async function onCopy<T>(db: string, fn: (con: SqliteConnection) => T): Promise<T> {
  return await withTempDir("copy", async (dir) => {
    const copy = path.join(dir, "copy.db");
    fs.copyFileSync(db, copy);
    const con = await openSqlite(copy);
    try {
      return fn(con);
    } finally {
      con.close();
    }
  });
}

/** `PRAGMA integrity_check` of a database, on a copy. */
export function integrityCheck(db: string): Promise<string> {
  return onCopy(db, (con) =>
    con.all("PRAGMA integrity_check").map((r) => Object.values(r as object)[0]).join("; "));
}

/** Which workload commit a database holds: k = max(seq) of log, and t's row count, which must match log's. */
export function workloadState(db: string): Promise<{ k: number; rows: number }> {
  return onCopy(db, (con) => {
    const [r] = con.all<{ k: number; logged: number; rows: number }>(
      "SELECT seq AS k, rows AS logged, (SELECT count(*) FROM t) AS rows FROM log ORDER BY seq DESC LIMIT 1",
    );
    assert.equal(Number(r.rows), Number(r.logged), `commit ${r.k} logged ${r.logged} rows of t, the file holds ${r.rows}`);
    return { k: Number(r.k), rows: Number(r.rows) };
  });
}

/** {@linkcode dumpDatabase} of a database in place, its WAL included (a connection to the file itself). */
export async function dumpLive(file: string): Promise<string> {
  const con = await openSqlite(file);
  try {
    return dumpDatabase(con);
  } finally {
    con.close();
  }
}

/** Every row of every table and the schema, as one string: equal strings mean equal contents. */
export function dumpDatabase(con: SqliteConnection): string {
  const hex = (v: unknown) => v instanceof Uint8Array ? `x'${Buffer.from(v).toString("hex")}'` : v;
  const schema = con.all<{ type: string; name: string; sql: string | null }>(
    "SELECT type, name, sql FROM sqlite_schema ORDER BY type, name",
  );
  const parts: string[] = [JSON.stringify(schema)];
  for (const { type, name } of schema) {
    if (type !== "table" || name.startsWith("sqlite_")) continue;
    const rows = con.all(`SELECT * FROM "${name}" ORDER BY rowid`).map((r) => Object.values(r as object).map(hex));
    parts.push(`${name}:${JSON.stringify(rows)}`);
  }
  return parts.join("\n");
}

/** {@linkcode dumpDatabase} of a file, read from a copy. */
export function dumpFile(db: string): Promise<string> {
  return onCopy(db, dumpDatabase);
}

/** One generation's objects as the replica lists them. */
export interface GenerationObjects {
  generation: string;
  /** Snapshot txids, ascending. */
  snapshots: number[];
  /** Segment txid ranges, ascending. */
  segments: Array<[number, number]>;
  firstTxid: number;
  lastTxid: number;
}

/**
 * Lists the replica and asserts that within every generation the segments
 * follow the first snapshot with no gap and no overlap, and that txids keep
 * growing from one generation to the next with no gap.
 */
export async function assertContiguous(replica: Replica): Promise<GenerationObjects[]> {
  const out: GenerationObjects[] = [];
  for (const generation of await listGenerations(replica.storage)) {
    const { snapshots, segments } = await listGeneration(replica.storage, generation);
    assert.ok(snapshots.length > 0, `generation ${generation} has no snapshot`);
    let next = snapshots[0].txid + 1;
    for (const s of segments) {
      assert.equal(s.firstTxid, next, `generation ${generation}: ${s.key} should start at txid ${next}`);
      assert.ok(s.lastTxid >= s.firstTxid, `${s.key} ends before it starts`);
      next = s.lastTxid + 1;
    }
    for (const s of snapshots) assert.ok(s.txid < next, `snapshot ${s.key} is past the last segment`);
    const g: GenerationObjects = {
      generation,
      snapshots: snapshots.map((s) => s.txid),
      segments: segments.map((s) => [s.firstTxid, s.lastTxid]),
      firstTxid: snapshots[0].txid,
      lastTxid: next - 1,
    };
    const prev = out.at(-1);
    if (prev) {
      assert.equal(g.firstTxid, prev.lastTxid + 1, `generation ${generation} should start right after ${prev.generation}`);
    }
    out.push(g);
  }
  assert.ok(out.length > 0, "the replica holds no generation");
  return out;
}

/**
 * The txids of every heal ('P' record) in the replica, read from the
 * segments themselves: a process killed right after shipping a heal may
 * never have logged it.
 */
export async function replicaHeals(replica: Replica, gens: GenerationObjects[]): Promise<number[]> {
  const heals: number[] = [];
  for (const g of gens) {
    for (const s of (await listGeneration(replica.storage, g.generation)).segments) {
      const { meta, payload } = decodeObject(await replica.storage.get(s.key), s.key);
      let txid = s.firstTxid - 1;
      for (const r of decodeSegmentBody(zstdDecompress(payload), meta.pageSize, s.key)) {
        if (r.tag === "header") continue;
        txid++;
        if (r.tag === "heal") heals.push(txid);
      }
      assert.equal(txid, s.lastTxid, `${s.key} holds txids ${s.firstTxid}..${txid}`);
    }
  }
  return heals;
}

/** What {@linkcode checkTxids} restored. */
export interface CheckedTxid {
  generation: string;
  txid: number;
  /** The workload commit the restored state is. */
  k: number;
}

/** Options for {@linkcode checkTxids}. */
export interface CheckTxidsOptions {
  /** Random txids checked per generation besides its first; default 2. */
  perGeneration?: number;
  /** Txids to check as well (those outside every generation are left out). */
  txids?: number[];
  /** The writer's side file ({@linkcode readSideFile}): each state must be a (k, rows) pair it recorded. */
  side?: Map<number, number>;
  /**
   * The heals' txids. Given, two checked txids of one generation with no heal
   * in between (t1 < heal <= t2) must be exactly t2 - t1 commits apart: a
   * segment's txid is one commit; only a heal's, or a new generation's
   * snapshot, stands for any number of them.
   */
  heals?: number[];
}

/**
 * Restores, in every generation, its first txid, `perGeneration` random
 * later ones and the given `txids`, and checks each: exactly that txid, from
 * its generation, `integrity_check` ok, a whole workload state that the
 * writer recorded (given `side`). Taken in txid order, across generations,
 * the restored commits never go back: a later txid is never an earlier state.
 */
export async function checkTxids(
  replica: Replica,
  gens: GenerationObjects[],
  rand: () => number,
  dir: string,
  options: CheckTxidsOptions = {},
): Promise<CheckedTxid[]> {
  const checked: CheckedTxid[] = [];
  const out = path.join(dir, "txid-check.db");
  const heals = options.heals ?? null;
  for (const g of gens) {
    const txids = new Set([g.firstTxid]);
    for (let i = 0; i < (options.perGeneration ?? 2) && g.lastTxid > g.firstTxid; i++) {
      txids.add(between(rand, g.firstTxid + 1, g.lastTxid));
    }
    for (const t of options.txids ?? []) if (t >= g.firstTxid && t <= g.lastTxid) txids.add(t);
    for (const txid of [...txids].sort((a, b) => a - b)) {
      const r = await restoreTo(replica, out, { txid });
      assert.equal(r.txid, txid);
      assert.equal(r.generation, g.generation, `txid ${txid} should come from generation ${g.generation}`);
      assert.equal(await integrityCheck(out), "ok", `integrity_check of txid ${txid}`);
      const { k, rows } = await workloadState(out);
      if (options.side) {
        const recorded = k === 0 ? 0 : options.side.get(k);
        assert.equal(rows, recorded, `txid ${txid} is commit ${k} with ${rows} rows: the writer recorded ${recorded} rows`);
      }
      const prev = checked.at(-1);
      if (prev) {
        assert.ok(k >= prev.k, `txid ${txid} is commit ${k}, an earlier state than txid ${prev.txid} (commit ${prev.k})`);
        if (heals && prev.generation === g.generation && !heals.some((h) => h > prev.txid && h <= txid)) {
          assert.equal(k - prev.k, txid - prev.txid, `txids ${prev.txid}..${txid} of ${g.generation} hold no heal: one commit each`);
        }
      }
      checked.push({ generation: g.generation, txid, k });
    }
  }
  return checked;
}
