/**
 * Snapshot pass benchmark: CPU (user + sys, all threads, from
 * process.cpuUsage) and wall time of taking one snapshot of a large
 * database, phase by phase, as the replicator takes a generation's first
 * snapshot:
 *
 * - capture: captureImage (copy the database file, lay the WAL over it);
 * - table: tableFromImage (hash every page), in the three-pass mode only;
 * - object: writeSnapshotObject (zstd into the object file, fsynced), which
 *   in the merged mode also fills the page table from the same chunks;
 * - rm: deleting the image and the object file.
 *
 * 1. Python's sqlite3 builds a database of `--mib` MiB with
 *    scripts/bench_sqlite.py (WAL mode, page size 4096, rows of half random
 *    bytes and half word-like text), kept under `--dir` for later runs.
 * 2. A Python writer appends `--wal-tx` small transactions with automatic
 *    checkpoints off and keeps its connection open, so the capture has a
 *    live WAL to lay over the copy.
 * 3. Each mode runs `--runs` times, alternating, after one warm-up run; the
 *    table shows, per mode, the run with the least total CPU (the least
 *    disturbed by anything else on the machine) and the median run.
 *    `--json FILE` appends every run's costs, one JSON line each.
 *
 * Modes: `three` is the replicator's original sequence (capture, then
 * tableFromImage, then writeSnapshotObject); `merged` fills the table inside
 * writeSnapshotObject (`table` option), one read of the image after capture.
 *
 * Usage: deno run -A scripts/bench_snapshot.ts  |  bun scripts/bench_snapshot.ts
 *        [--mib 256,1024] [--runs 3] [--modes three,merged] [--dir /tmp] [--wal-tx 200]
 *        [--json FILE] [--label TEXT]
 *
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { PageTable } from "../src/cache/page_table.ts";
import { captureImage } from "../src/capture/snapshot_reader.ts";
import { WalFollower } from "../src/capture/wal_follower.ts";
import { newGenerationId } from "../src/replica/layout.ts";
import { tableFromImage } from "../src/replicate/page_table_sync.ts";
import { writeSnapshotObject } from "../src/replicate/snapshot_object.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    mib: { type: "string", default: "256" },
    runs: { type: "string", default: "3" },
    modes: { type: "string", default: "three,merged" },
    dir: { type: "string", default: os.tmpdir() },
    "wal-tx": { type: "string", default: "200" },
    json: { type: "string" },
    label: { type: "string", default: "" },
  },
});
const SIZES = values.mib!.split(",").map(Number);
const RUNS = Number(values.runs);
const MODES = values.modes!.split(",") as Mode[];
const WAL_TX = Number(values["wal-tx"]);

type Mode = "three" | "merged";
type Phase = "capture" | "table" | "object" | "rm";
const PHASES: Phase[] = ["capture", "table", "object", "rm"];

interface Cost {
  wall: number;
  user: number;
  sys: number;
}

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const runtime = g.Bun ? `bun ${g.Bun.version}` : `deno ${g.Deno.version.deno}`;

/** Builds (once) a WAL-mode database of about `mib` MiB under --dir. */
function buildDatabase(mib: number): string {
  const db = path.join(values.dir!, `walship-bench-snapshot-${mib}.db`);
  if (fs.existsSync(db)) return db;
  const r = spawnSync("python3", [path.join(ROOT, "scripts", "bench_sqlite.py"), "build", db, "--mib", String(mib)], {
    stdio: "inherit",
  });
  if (r.status !== 0) throw new Error(`building ${db} failed`);
  return db;
}

const WRITER = `
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("PRAGMA wal_autocheckpoint=0")
for i in range(int(sys.argv[2])):
    con.execute("INSERT INTO t(body) VALUES (?)", (("walship %d " % i).encode() * 40,))
print("ready", flush=True)
sys.stdin.read()
con.close()
`;

/** Starts a writer that leaves `tx` commits in the WAL and holds its connection until stopped. */
async function startWriter(db: string, tx: number): Promise<() => Promise<void>> {
  const child = spawn("python3", ["-c", WRITER, db, String(tx)], { stdio: ["pipe", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`writer exited with ${code}`)));
    child.stdout!.on("data", (d: Uint8Array) => {
      if (new TextDecoder().decode(d).includes("ready")) resolve();
    });
  });
  return () =>
    new Promise<void>((resolve) => {
      child.removeAllListeners("exit");
      child.once("exit", () => resolve());
      child.stdin!.end();
    });
}

async function measure<T>(fn: () => T | Promise<T>): Promise<[T, Cost]> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await fn();
  const wall = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return [value, { wall, user: c.user / 1000, sys: c.system / 1000 }];
}

/** One snapshot in `mode`; returns the cost of each phase. */
async function snapshotOnce(db: string, dir: string, mode: Mode): Promise<Record<Phase, Cost>> {
  const follower = new WalFollower(db, null);
  follower.rebase(null, 0, 0);
  const imagePath = path.join(dir, "image");
  const objectPath = path.join(dir, "object");
  const costs = {} as Record<Phase, Cost>;
  let image;
  [image, costs.capture] = await measure(() => captureImage(db, follower, imagePath, { baseline: true, onPoll: () => {} }));
  const generation = newGenerationId();
  const meta = {
    kind: "snapshot" as const,
    generation,
    pageSize: image.pageSize,
    txid: 1,
    time: Date.now(),
    position: image.position,
    bigEndian: image.bigEndian,
    dbSize: image.dbSize,
  };
  let table: PageTable;
  if (mode === "three") {
    [table, costs.table] = await measure(() => tableFromImage(image.path, image.pageSize, image.dbSize, generation, 1));
    [, costs.object] = await measure(() => writeSnapshotObject(image.path, meta, objectPath));
  } else {
    table = new PageTable(image.pageSize, generation, 1);
    costs.table = { wall: 0, user: 0, sys: 0 };
    [, costs.object] = await measure(() => writeSnapshotObject(image.path, meta, objectPath, { table }));
  }
  if (table.count !== image.dbSize) throw new Error(`${mode}: the table holds ${table.count} pages, the image ${image.dbSize}`);
  [, costs.rm] = await measure(() => {
    fs.rmSync(imagePath);
    fs.rmSync(objectPath);
  });
  return costs;
}

const cpu = (c: Cost) => c.user + c.sys;
const sum = (costs: Record<Phase, Cost>): Cost =>
  PHASES.reduce((a, p) => ({ wall: a.wall + costs[p].wall, user: a.user + costs[p].user, sys: a.sys + costs[p].sys }), {
    wall: 0,
    user: 0,
    sys: 0,
  });
const s = (ms: number) => (ms / 1000).toFixed(2);
const cell = (c: Cost) => `${s(cpu(c))} (${s(c.user)}+${s(c.sys)}) / ${s(c.wall)}`;

function row(cells: string[]): string {
  const widths = [6, 7, 8, 26, 26, 26, 26, 26];
  return cells.map((c, i) => c.padEnd(widths[i] ?? 26)).join(" ");
}

async function main(): Promise<void> {
  console.log(`snapshot passes, ${runtime}, ${RUNS} run(s) per mode; cells: CPU s (user+sys) / wall s`);
  console.log(row(["MiB", "mode", "run", ...PHASES, "total"]));
  for (const mib of SIZES) {
    const db = buildDatabase(mib);
    const stopWriter = await startWriter(db, WAL_TX);
    const dir = fs.mkdtempSync(path.join(values.dir!, "walship-bench-snapshot-"));
    try {
      const runs = new Map<Mode, Array<Record<Phase, Cost>>>(MODES.map((m) => [m, []]));
      await snapshotOnce(db, dir, MODES[0]); // warm-up: the database in the page cache
      for (let i = 0; i < RUNS; i++) {
        for (const mode of MODES) runs.get(mode)!.push(await snapshotOnce(db, dir, mode));
      }
      for (const mode of MODES) {
        const all = runs.get(mode)!.sort((a, b) => cpu(sum(a)) - cpu(sum(b)));
        const pick = { least: all[0], median: all[Math.floor(all.length / 2)] };
        for (const [name, r] of Object.entries(pick)) {
          console.log(row([String(mib), mode, name, ...PHASES.map((p) => cell(r[p])), cell(sum(r))]));
        }
        if (values.json) {
          const lines = all.map((r) => JSON.stringify({ label: values.label, runtime, mib, mode, ...r }) + "\n");
          fs.appendFileSync(values.json, lines.join(""));
        }
      }
    } finally {
      await stopWriter();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}

await main();
