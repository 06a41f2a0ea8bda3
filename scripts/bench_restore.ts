/**
 * Replication and restore benchmark (issue "The main job", Speed):
 *
 * 1. Restore of a ~100 MB database with 1,000 segments after its snapshot,
 *    from a directory replica and from a local S3 server, beside the floor
 *    that no restore can beat: downloading every object and decompressing it.
 * 2. Uploads under steady writes: PUTs per sync interval.
 *
 * Usage: deno run -A scripts/bench_restore.ts  |  bun scripts/bench_restore.ts
 *        [--mib 100] [--segments 1000] [--reps 3] [--steady-seconds 10]
 */

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { openReplica } from "../src/replica/open_replica.ts";
import { decodeObject } from "../src/replica/object_format.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { zstdDecompress } from "../src/replica/zstd.ts";
import { Replicator } from "../src/replicate/replicator.ts";
import { listGeneration, listGenerations } from "../src/restore/plan.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { startS3Server } from "../test/_s3_server.ts";

const { values } = parseArgs({
  options: {
    mib: { type: "string", default: "100" },
    segments: { type: "string", default: "1000" },
    reps: { type: "string", default: "3" },
    "steady-seconds": { type: "string", default: "10" },
  },
});
const MIB = Number(values.mib);
const SEGMENTS = Number(values.segments);
const REPS = Number(values.reps);
const STEADY_SECONDS = Number(values["steady-seconds"]);

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const runtime = g.Bun ? `bun ${g.Bun.version}` : `deno ${g.Deno.version.deno}`;

/** The runtime's own SQLite, for the writer (walship itself never links SQLite). */
async function openDb(file: string) {
  if (g.Bun) {
    const spec = "bun:sqlite";
    const { Database } = await import(spec);
    const db = new Database(file);
    return { exec: (s: string) => db.exec(s), run: (s: string, ...p: unknown[]) => db.query(s).run(...p), close: () => db.close() };
  }
  const spec = "node:sqlite";
  const { DatabaseSync } = await import(spec);
  const db = new DatabaseSync(file);
  return { exec: (s: string) => db.exec(s), run: (s: string, ...p: unknown[]) => db.prepare(s).run(...p), close: () => db.close() };
}

function text(n: number, seed: number): string {
  // Compressible like real rows: words from a small vocabulary.
  const words = ["alpha", "beta", "gamma", "delta", "order", "item", "user", "paid", "shipped", "note"];
  let s = "";
  let x = seed;
  while (s.length < n) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += words[x % words.length] + " " + (x % 100000) + " ";
  }
  return s.slice(0, n);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function buildReplica(url: string, storage: ReplicaStorage, dir: string): Promise<string> {
  const dbPath = path.join(dir, "app.db");
  const db = await openDb(dbPath);
  db.exec("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)");
  const rows = Math.ceil((MIB * 1048576) / 2000);
  db.exec("BEGIN");
  for (let i = 0; i < rows; i++) db.run("INSERT INTO t(body) VALUES (?)", text(2000, i));
  db.exec("COMMIT");
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  const replicator = new Replicator(dbPath, { storage, syncInterval: 1, cacheDir: path.join(dir, "cache") });
  await replicator.start();
  for (let i = 0; i < SEGMENTS; i++) {
    db.run("UPDATE t SET body = ? WHERE id = ?", text(2000, rows + i), 1 + ((i * 7919) % rows));
    await replicator.flush(); // one segment per transaction
  }
  await replicator.stop();
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  db.close();
  void url;
  return dbPath;
}

async function floor(storage: ReplicaStorage, parallelism: number): Promise<number> {
  const t0 = performance.now();
  const [gen] = await listGenerations(storage);
  const { snapshots, segments } = await listGeneration(storage, gen);
  const keys = [snapshots[0].key, ...segments.map((s) => s.key)];
  let next = 0;
  await Promise.all(Array.from({ length: parallelism }, async () => {
    while (next < keys.length) {
      const key = keys[next++];
      const { payload } = decodeObject(await storage.get(key), key);
      zstdDecompress(payload);
    }
  }));
  return performance.now() - t0;
}

async function measure(label: string, url: string, env: Record<string, string> | undefined) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "walship-bench-"));
  try {
    const storage = openReplica(url, { env });
    const source = await buildReplica(url, storage, dir);
    const [gen] = await listGenerations(storage);
    const listing = await listGeneration(storage, gen);
    const bytes = [...listing.snapshots, ...listing.segments].reduce((n, e) => n + e.size, 0);
    const restoreMs: number[] = [];
    const floorMs: number[] = [];
    let same = true;
    for (let r = 0; r < REPS; r++) {
      const out = path.join(dir, `restored-${r}.db`);
      const t0 = performance.now();
      await restoreDatabase({ storage: openReplica(url, { env }), output: out });
      restoreMs.push(performance.now() - t0);
      same &&= Buffer.compare(fs.readFileSync(out), fs.readFileSync(source)) === 0;
      fs.rmSync(out);
      floorMs.push(await floor(openReplica(url, { env }), 8));
    }
    const size = fs.statSync(source).size;
    console.log(
      `| ${label} | ${runtime} | ${(size / 1048576).toFixed(1)} MiB | ${listing.segments.length} | ` +
        `${(bytes / 1048576).toFixed(1)} MiB | ${median(restoreMs).toFixed(0)} ms | ${median(floorMs).toFixed(0)} ms | ` +
        `${(median(restoreMs) / median(floorMs)).toFixed(2)} | ${same ? "yes" : "NO"} |`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function steady(url: string, env: Record<string, string>) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "walship-bench-"));
  try {
    const dbPath = path.join(dir, "app.db");
    const db = await openDb(dbPath);
    db.exec("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)");
    const storage = openReplica(url, { env });
    const replicator = new Replicator(dbPath, { storage, cacheDir: path.join(dir, "cache") }); // default 1 s sync
    await replicator.start();
    const putsBefore = storage.stats.puts;
    const t0 = Date.now();
    let commits = 0;
    while (Date.now() - t0 < STEADY_SECONDS * 1000) {
      db.run("INSERT INTO t(body) VALUES (?)", text(200, commits++));
      await new Promise((r) => setTimeout(r, 5));
    }
    const seconds = (Date.now() - t0) / 1000;
    await replicator.stop();
    const puts = storage.stats.puts - putsBefore;
    db.close();
    console.log(
      `| ${runtime} | ${seconds.toFixed(1)} s | ${commits} | ${puts} | ${(puts / seconds).toFixed(2)} |`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const s3 = await startS3Server({ buckets: ["bench"] });
try {
  console.log(`\n### Restore of ${MIB} MiB with ${SEGMENTS} segments (median of ${REPS})\n`);
  console.log("| replica | runtime | database | segments | stored | restore | download+decompress floor | ratio | identical |");
  console.log("|---|---|---|---|---|---|---|---|---|");
  const fileDir = fs.mkdtempSync(path.join(os.tmpdir(), "walship-bench-replica-"));
  await measure("file", `file://${fileDir}`, undefined);
  fs.rmSync(fileDir, { recursive: true, force: true });
  await measure("s3rver", s3.url("bench", `restore-${Date.now()}`), s3.env);
  console.log(`\n### Steady writes, default 1 s sync interval (s3rver)\n`);
  console.log("| runtime | duration | commits | PUTs | PUTs per second |");
  console.log("|---|---|---|---|---|");
  await steady(s3.url("bench", `steady-${Date.now()}`), s3.env);
} finally {
  await s3.close();
}
