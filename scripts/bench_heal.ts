/**
 * Heal vs snapshot benchmark (docs/BENCHMARKS.md, "Heal vs snapshot"): what
 * it costs to bring a replica back after walship missed commits, by shipping
 * the changed pages (a heal) or a whole new snapshot.
 *
 * 1. Python's sqlite3 builds a database of `--mib` MiB (page size 4096, one
 *    3,500-byte row a page, half random and half zero bytes, so it
 *    compresses about 2:1).
 * 2. A replicator takes the generation's snapshot, ships it, and stops.
 * 3. While it is stopped, Python rewrites `--percent` % of the rows (same
 *    size, ids spread evenly over the table: that many pages spread over the
 *    file) in transactions of 500 rows, then checkpoints with TRUNCATE: the
 *    WAL starts over and the replicated position is gone.
 * 4. (a) heal: the replicator starts again with the same cache directory; it
 *    cannot resume, heals, and ships the heal. Timed from start() to the
 *    upload being done.
 *    (b) snapshot: a fresh replicator with a new cache directory on the same
 *    database starts a new generation: a full snapshot. Timed the same way.
 * 5. Both end states are restored and compared with the database byte for byte.
 *
 * Usage: deno run -A scripts/bench_heal.ts  |  bun scripts/bench_heal.ts
 *        [--mib 1024] [--percent 1] [--replica file,s3] [--dir /tmp]
 */

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { openReplica } from "../src/replica/open_replica.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { Replicator, type ReplicatorEvent } from "../src/replicate/replicator.ts";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { startS3Server } from "../test/_s3_server.ts";

const { values } = parseArgs({
  options: {
    mib: { type: "string", default: "1024" },
    percent: { type: "string", default: "1" },
    replica: { type: "string", default: "file" },
    dir: { type: "string", default: os.tmpdir() },
  },
});
const MIB = Number(values.mib);
const PERCENT = Number(values.percent);
const REPLICAS = values.replica.split(",");
const PAGE = 4096;

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const runtime = g.Bun ? `bun ${g.Bun.version}` : `deno ${g.Deno.version.deno}`;
const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

function python(script: string, ...args: string[]): string {
  const r = spawnSync("python3", ["-c", script, ...args], { encoding: "utf8", maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout.trim();
}

const BUILD = `
import os, sqlite3, sys
db, rows = sys.argv[1], int(sys.argv[2])
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA page_size=${PAGE}")
con.execute("PRAGMA journal_mode=OFF")
con.execute("PRAGMA synchronous=OFF")
con.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
zeros = bytes(1750)
con.execute("BEGIN")
for start in range(0, rows, 10000):
    con.executemany("INSERT INTO bulk(v) VALUES (?)", ((os.urandom(1750) + zeros,) for _ in range(min(10000, rows - start))))
con.execute("COMMIT")
assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
con.close()
`;

const CHANGE = `
import os, sqlite3, sys
db, rows, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(db, isolation_level=None)
ids = [1 + (i * rows) // n for i in range(n)]
zeros = bytes(1750)
for start in range(0, n, 500):
    con.execute("BEGIN")
    con.executemany("UPDATE bulk SET v = ? WHERE id = ?", ((os.urandom(1750) + zeros, i) for i in ids[start:start + 500]))
    con.execute("COMMIT")
print(con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
con.close()
`;

interface Run {
  ms: number;
  /** From start() until the heal or snapshot was in the local cache. */
  capturedMs: number;
  bytesUp: number;
  puts: number;
  objectBytes: number;
  pages: number;
  generation: string;
}

/** Starts a replicator, waits until what it shipped at start is uploaded, stops it. */
async function timedStart(db: string, storage: ReplicaStorage, cacheDir: string, kind: "heal" | "snapshot"): Promise<Run> {
  const replicator = new Replicator(db, { storage, cacheDir });
  const events: ReplicatorEvent[] = [];
  let capturedMs = 0;
  const before = { ...storage.stats };
  const t0 = performance.now();
  replicator.on((e) => {
    if ((e.type === "heal" || e.type === "snapshot") && !capturedMs) capturedMs = performance.now() - t0;
    events.push(e);
  });
  await replicator.start();
  await replicator.flush();
  const ms = performance.now() - t0;
  await replicator.stop();
  const heal = events.find((e) => e.type === "heal");
  const snap = events.find((e) => e.type === "snapshot");
  if (kind === "heal" && (!heal || snap)) throw new Error(`expected a heal and no snapshot: ${JSON.stringify(events)}`);
  if (kind === "snapshot" && (!snap || heal)) throw new Error(`expected a snapshot and no heal: ${JSON.stringify(events)}`);
  const status = replicator.status();
  const listing = await listGeneration(storage, status.generation!);
  const objectBytes = kind === "heal"
    ? listing.segments.find((s) => heal?.type === "heal" && s.firstTxid === heal.txid)!.size
    : listing.snapshots.at(-1)!.size;
  return {
    ms,
    capturedMs,
    bytesUp: storage.stats.bytesUp - before.bytesUp,
    puts: storage.stats.puts - before.puts,
    objectBytes,
    pages: heal?.type === "heal" ? heal.pages : (fs.statSync(db).size / PAGE),
    generation: status.generation!,
  };
}

async function same(storage: ReplicaStorage, db: string, out: string): Promise<boolean> {
  await restoreDatabase({ storage, output: out, force: true });
  const a = fs.openSync(out, "r");
  const b = fs.openSync(db, "r");
  try {
    if (fs.fstatSync(a).size !== fs.fstatSync(b).size) return false;
    const x = new Uint8Array(16 << 20);
    const y = new Uint8Array(16 << 20);
    for (let at = 0;; at += x.length) {
      const n = fs.readSync(a, x, 0, x.length, at);
      fs.readSync(b, y, 0, y.length, at);
      if (n === 0) return true;
      if (Buffer.compare(x.subarray(0, n), y.subarray(0, n)) !== 0) return false;
    }
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
    fs.rmSync(out, { force: true });
  }
}

async function measure(label: string, url: string, env: Record<string, string> | undefined, dir: string) {
  const db = path.join(dir, "app.db");
  const rows = Math.floor((MIB * 1048576) / PAGE) - 2; // about one row a page, besides page 1 and the root
  let t = performance.now();
  python(BUILD, db, String(rows));
  const buildMs = performance.now() - t;
  const dbBytes = fs.statSync(db).size;
  const cacheA = path.join(dir, "cache-a");

  // The generation's first snapshot, then a stop.
  const first = await timedStart(db, openReplica(url, { env }), cacheA, "snapshot");

  // Down: PERCENT % of the rows rewritten, the WAL truncated.
  const n = Math.round((rows * PERCENT) / 100);
  t = performance.now();
  const busy = python(CHANGE, db, String(rows), String(n));
  if (busy !== "0") throw new Error("the TRUNCATE checkpoint was blocked");
  const changeMs = performance.now() - t;

  const healStorage = openReplica(url, { env });
  const heal = await timedStart(db, healStorage, cacheA, "heal");
  if (heal.generation !== first.generation) throw new Error("the heal started a new generation");
  const healSame = await same(healStorage, db, path.join(dir, "restored.db"));

  const snapStorage = openReplica(url, { env });
  const snap = await timedStart(db, snapStorage, path.join(dir, "cache-b"), "snapshot");
  if ((await listGenerations(snapStorage)).length !== 2) throw new Error("expected a second generation");
  const snapSame = await same(snapStorage, db, path.join(dir, "restored.db"));

  const row = (what: string, r: Run, identical: boolean) =>
    console.log(
      `| ${label} | ${runtime} | ${what} | ${r.pages} | ${secs(r.ms)} | ${secs(r.capturedMs)} | ${MiB(r.bytesUp)} (${r.bytesUp}) | ${r.puts} | ` +
        `${MiB(r.objectBytes)} | ${identical ? "yes" : "NO"} |`,
    );
  console.log(
    `\n${label}: database ${MiB(dbBytes)} (${dbBytes / PAGE} pages) built in ${secs(buildMs)}; ` +
      `${n} rows (${PERCENT}%) rewritten while stopped in ${secs(changeMs)}; first snapshot ${secs(first.ms)}\n`,
  );
  console.log(
    "| replica | runtime | what | pages shipped | wall time | of which capture | bytes uploaded | PUTs | object | restore identical |",
  );
  console.log("|---|---|---|---:|---:|---:|---:|---:|---:|---|");
  row(`heal (${PERCENT}% of pages changed)`, heal, healSame);
  row("full snapshot (new generation)", snap, snapSame);
  console.log(
    `\nheal/snapshot: time ${(heal.ms / snap.ms).toFixed(3)}, bytes uploaded ${(heal.bytesUp / snap.bytesUp).toFixed(4)}`,
  );
}

const s3 = REPLICAS.includes("s3") ? await startS3Server({ buckets: ["bench"] }) : null;
try {
  console.log(`Heal vs snapshot: ${MIB} MiB, ${PERCENT}% of pages changed, ${runtime}, ${os.cpus().length} CPUs`);
  for (const replica of REPLICAS) {
    const dir = fs.mkdtempSync(path.join(values.dir, "walship-bench-heal-"));
    try {
      if (replica === "file") await measure("file", `file://${path.join(dir, "replica")}`, undefined, dir);
      else if (replica === "s3") await measure("s3rver", s3!.url("bench", `heal-${Date.now()}`), s3!.env, dir);
      else throw new Error(`--replica ${replica}: file or s3`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
} finally {
  await s3?.close();
}
