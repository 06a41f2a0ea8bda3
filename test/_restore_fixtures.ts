/**
 * Fixtures for the restore tests (point in time, damaged replicas, bad
 * input, CLI flags): the walship CLI run as a real subprocess of the current
 * runtime or in-process, a writer that commits one numbered row per
 * transaction through the runtime's own SQLite, a replica built by a real
 * {@linkcode Replicator}, and readers that look at restored files with the
 * sqlite3 command line.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { S3Client } from "@aws-sdk/client-s3";
import { runCli } from "../src/cli/cli.ts";
import { parseObjectKey } from "../src/replica/layout.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { Replicator, type ReplicatorOptions } from "../src/replicate/replicator.ts";
import { openSqlite, type SqliteConnection } from "./_runtime.ts";
import { spawnWalship, type SpawnWalshipOptions } from "./_util.ts";

/** A secret no message may ever show; s3rver does not check secrets, so it works everywhere. */
export const SECRET = "wsTestSecret-7f3a9c1e5b2d4f6a8c0e";

/** What a finished CLI run printed. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@linkcode walship}. */
export interface WalshipRunOptions extends SpawnWalshipOptions {
  /** Milliseconds before the run is SIGKILLed; default 60 s. */
  timeoutMs?: number;
}

/** Runs `walship <args>` as a subprocess of this runtime; kills it after `timeoutMs`. */
export function walship(args: string[], options: WalshipRunOptions = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawnWalship(args, options);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? -1 : -2), stdout, stderr });
    });
  });
}

/** A long-running `walship` subprocess (replicate) whose output is collected as it comes. */
export interface LiveCli {
  child: ChildProcess;
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves with the exit code (or -1 when killed by a signal). */
  exited: Promise<number>;
  /** True until the process exits. */
  running(): boolean;
  /**
   * Sends a signal. Deno's ChildProcess.kill() makes 'close' report the
   * signal even when the child handled it and exited 0, so this goes
   * through process.kill.
   */
  signal(name: "SIGTERM" | "SIGINT" | "SIGKILL"): void;
}

/** Starts `walship <args>` and returns at once. */
export function startWalship(args: string[], env: Record<string, string> = {}): LiveCli {
  const child = spawnWalship(args, { env });
  let stdout = "";
  let stderr = "";
  let alive = true;
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number>((resolve) =>
    child.on("close", (code) => {
      alive = false;
      resolve(code ?? -1);
    })
  );
  return {
    child,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    exited,
    running: () => alive,
    signal: (name) => {
      if (alive) process.kill(child.pid!, name);
    },
  };
}

/** Runs the CLI in-process (no credentials needed: file replicas only) and captures what it prints. */
export async function cli(args: string[]): Promise<CliRun> {
  let stdout = "";
  let stderr = "";
  const line = (t: string) => (t.endsWith("\n") ? t : t + "\n");
  const code = await runCli(args, {
    out: (t) => void (stdout += line(t)),
    err: (t) => void (stderr += line(t)),
  });
  return { code, stdout, stderr };
}

/**
 * Asserts the shape every expected CLI failure has: exit 1, nothing on
 * stdout, exactly one line on stderr starting `walship: `, matching every
 * pattern, with no stack trace and no secret.
 */
export function assertOneLineError(run: CliRun, ...patterns: Array<RegExp | string>): string {
  const lines = run.stderr.split("\n").filter((l) => l !== "");
  assert.equal(run.code, 1, `exit code 1 expected; stderr: ${run.stderr}`);
  assert.equal(lines.length, 1, `one line on stderr expected, got:\n${run.stderr}`);
  const line = lines[0];
  assert.match(line, /^walship: \S/);
  assert.doesNotMatch(line, /unexpected error/);
  assert.doesNotMatch(run.stderr, /^\s+at\s/m, "no stack trace");
  assert.ok(!run.stderr.includes(SECRET) && !run.stdout.includes(SECRET), "the secret key leaked");
  for (const p of patterns) {
    if (typeof p === "string") {
      assert.ok(line.includes(p), `expected ${JSON.stringify(p)} in: ${line}`);
    } else assert.match(line, p);
  }
  return line;
}

export function sha256(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/**
 * A WAL-mode database whose table `t(k, v)` gains one row per transaction;
 * row `k` is the k-th commit (k = 0 is written by {@linkcode openWriter}).
 */
export interface Writer {
  db: string;
  conn: SqliteConnection;
  /** Next k to commit. */
  next: number;
  /** Commits row `next` and returns Date.now() taken right after the commit returned. */
  commit(): number;
  /** Checkpoints the WAL into the database file and closes. */
  close(): void;
}

export async function openWriter(db: string, rowBytes = 100): Promise<Writer> {
  const conn = await openSqlite(db);
  conn.exec("PRAGMA journal_mode=WAL");
  conn.exec("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)");
  conn.run("INSERT INTO t VALUES (0, zeroblob(?))", rowBytes);
  const w: Writer = {
    db,
    conn,
    next: 1,
    commit() {
      conn.run("INSERT INTO t VALUES (?, randomblob(?))", w.next++, rowBytes);
      return Date.now();
    },
    close() {
      conn.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      conn.close();
    },
  };
  return w;
}

/** What the sqlite3 command line sees in a restored database: integrity, row count and max(k). */
export interface RestoredView {
  integrity: string;
  rows: number;
  maxK: number;
}

/** Reads a restored database with the sqlite3 command line (on a copy, so the file stays as restored). */
export function readRestored(file: string): RestoredView {
  const copy = `${file}.read-${process.pid}-${Math.random().toString(16).slice(2)}`;
  fs.copyFileSync(file, copy);
  try {
    const r = spawnSync("sqlite3", ["-batch", "-separator", "|", copy], {
      input: "PRAGMA integrity_check;\nSELECT count(*), max(k) FROM t;\n",
      encoding: "utf8",
    });
    if (r.status !== 0 || r.stderr) throw new Error(`sqlite3 failed on ${file}: ${r.stderr}`);
    const [integrity, counts] = r.stdout.trim().split("\n");
    const [rows, maxK] = counts.split("|").map(Number);
    return { integrity, rows, maxK };
  } finally {
    for (const s of ["", "-wal", "-shm"]) fs.rmSync(copy + s, { force: true });
  }
}

/** Asserts that a restored file holds rows 0..k and nothing else, intact. */
export function assertRestoredK(file: string, k: number, what = file): void {
  const v = readRestored(file);
  assert.equal(v.integrity, "ok", `${what}: integrity_check`);
  assert.deepEqual(
    { rows: v.rows, maxK: v.maxK },
    { rows: k + 1, maxK: k },
    `${what}: rows 0..${k} expected`,
  );
}

/** Replicator options every test uses: a fast sync, the cache inside the test's directory. */
export function replicatorFor(
  db: string,
  storage: ReplicaStorage,
  options: Partial<ReplicatorOptions> = {},
): Replicator {
  return new Replicator(db, {
    storage,
    cacheDir: path.join(path.dirname(db), `cache-${Math.random().toString(16).slice(2)}`),
    syncInterval: 50,
    retry: { initialMs: 50, maxMs: 500, warnEveryMs: 60_000 },
    ...options,
  });
}

/** A replica built by a real replicator: one snapshot (txid 1 holds k = 0), then one segment per commit. */
export interface BuiltReplica {
  storage: ReplicaStorage;
  generation: string;
  snapshotKey: string;
  /** Segment keys by their (single) txid. */
  segments: Map<number, string>;
  /** Highest txid; k = txid - 1. */
  lastTxid: number;
}

/**
 * Replicates a fresh database with `commits` commits, flushing after each so
 * every segment holds exactly one transaction, and stops.
 */
export async function buildReplica(
  dir: string,
  storage: ReplicaStorage,
  commits: number,
): Promise<BuiltReplica> {
  const w = await openWriter(path.join(dir, "src.db"));
  const r = replicatorFor(w.db, storage);
  try {
    await r.start();
    for (let i = 0; i < commits; i++) {
      w.commit();
      await r.flush();
    }
  } finally {
    await r.stop();
    w.close();
  }
  const generation = r.status().generation!;
  const segments = new Map<number, string>();
  let snapshotKey = "";
  for (const o of await storage.list(`${generation}/`)) {
    const e = parseObjectKey(generation, o.key, o.size);
    if (e?.kind === "snapshot") snapshotKey = e.key;
    if (e?.kind === "segment") {
      assert.equal(e.firstTxid, e.lastTxid, "one transaction per segment");
      segments.set(e.firstTxid, e.key);
    }
  }
  assert.ok(
    snapshotKey.includes("/snapshot-0000000000000001-"),
    `snapshot at txid 1: ${snapshotKey}`,
  );
  assert.deepEqual([...segments.keys()], Array.from({ length: commits }, (_, i) => i + 2));
  return { storage, generation, snapshotKey, segments, lastTxid: commits + 1 };
}

/** Names of the entries of a directory, sorted. */
export function listDir(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

/** A raw AWS SDK client on the test server, for tampering with objects behind walship's back. */
export function rawS3(endpoint: string): S3Client {
  return new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

/** Copies every object of one replica to another (a fresh copy to damage). */
export async function copyReplica(from: ReplicaStorage, to: ReplicaStorage): Promise<void> {
  for (const o of await from.list("")) await to.put(o.key, await from.get(o.key));
}
