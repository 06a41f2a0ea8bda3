/**
 * Throughput of WAL checksum verification and full scanning, on a real WAL
 * written by Python's sqlite3 (wal_autocheckpoint=0), for each page size,
 * with little- and big-endian checksums, from memory and from a file.
 *
 *   deno run -A scripts/bench_scan.ts [--mib 64] [--reps 9] [--page-sizes 4096,65536]
 *   bun scripts/bench_scan.ts [same flags]
 *
 * Prints a Markdown table: the median of `reps` runs, in MB/s (10^6 bytes
 * per second) of WAL bytes processed.
 *
 * @module
 */

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openReadOnly } from "../src/capture/file_source.ts";
import { walChecksum } from "../src/sqlite/checksum.ts";
import {
  encodeWalHeader,
  frameOffset,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  type WalHeader,
} from "../src/sqlite/wal.ts";
import {
  bytesSource,
  readWalHeader,
  scanFrames,
  type WalPosition,
} from "../src/sqlite/wal_scanner.ts";

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const MIB = Number(flag("mib", "64"));
const REPS = Number(flag("reps", "9"));
const PAGE_SIZES = flag("page-sizes", "4096,65536").split(",").map(Number);
// deno-lint-ignore no-explicit-any
const g = globalThis as any;
const runtime = g.Bun ? `bun ${g.Bun.version}` : `deno ${g.Deno.version.deno}`;

/** Writes a WAL of at least `mib` MiB with Python's sqlite3 and copies it while the connection is open. */
function makeWal(dir: string, pageSize: number, mib: number): string {
  const script = `
import os, shutil, sqlite3, sys
db, out, page, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
con = sqlite3.connect(db, isolation_level=None)
con.execute(f"PRAGMA page_size={page}")
con.execute("PRAGMA journal_mode=WAL")
con.execute("PRAGMA wal_autocheckpoint=0")
con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
while os.path.getsize(db + "-wal") < target:
    con.execute("BEGIN")
    for _ in range(64):
        con.execute("INSERT INTO t(v) VALUES (randomblob(3000 + abs(random()) % 9000))")
    con.execute("COMMIT")
shutil.copyfile(db + "-wal", out)
con.close()
`;
  const out = path.join(dir, `wal-${pageSize}-le`);
  const r = spawnSync("python3", [
    "-c",
    script,
    path.join(dir, `db-${pageSize}`),
    out,
    String(pageSize),
    String(mib << 20),
  ], {
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`python3 failed: ${r.stderr}`);
  return out;
}

/** The same WAL with big-endian checksums: new magic, header checksum and frame chain. */
function toBigEndian(wal: Uint8Array): Uint8Array {
  const header = readWalHeader(bytesSource(wal))!;
  const out = wal.slice();
  const head = encodeWalHeader({ ...header, bigEndian: true });
  out.set(head, 0);
  const v = new DataView(out.buffer);
  const state = new Uint32Array([v.getUint32(24), v.getUint32(28)]);
  const frameSize = WAL_FRAME_HEADER_SIZE + header.pageSize;
  for (let off = WAL_HEADER_SIZE; off + frameSize <= out.length; off += frameSize) {
    walChecksum(state, out, off, 8, true);
    walChecksum(state, out, off + WAL_FRAME_HEADER_SIZE, header.pageSize, true);
    v.setUint32(off + 16, state[0]);
    v.setUint32(off + 20, state[1]);
  }
  return out;
}

/** The checksum chain alone over every frame, as the scanner computes it. */
function checksumChain(wal: Uint8Array, pageSize: number, bigEndian: boolean): number {
  const state = new Uint32Array(2);
  walChecksum(state, wal, 0, 24, bigEndian);
  const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
  let frames = 0;
  for (let off = WAL_HEADER_SIZE; off + frameSize <= wal.length; off += frameSize, frames++) {
    walChecksum(state, wal, off, 8, bigEndian);
    walChecksum(state, wal, off + WAL_FRAME_HEADER_SIZE, pageSize, bigEndian);
    if (state[0] !== new DataView(wal.buffer, wal.byteOffset + off + 16, 8).getUint32(0)) {
      throw new Error(`chain broken at frame ${frames + 1}`);
    }
  }
  return frames;
}

/** Scans collecting raw frames, 16 MiB of transactions at a time, as a replicator does. */
function scanInBatches(bytes: Uint8Array, header: WalHeader): number {
  const source = bytesSource(bytes);
  let from: WalPosition | null = null;
  for (;;) {
    const scan = scanFrames(source, header, from, { collect: true, maxBytes: 16 << 20 });
    if (scan.stop !== "limit") return scan.lastValidFrame;
    from = scan.position;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Frees the previous row's garbage first, where the runtime lets us (Bun; Deno with --v8-flags=--expose-gc). */
function collectGarbage(): void {
  if (g.Bun) g.Bun.gc(true);
  else if (typeof g.gc === "function") g.gc();
}

/** Runs `fn` once to warm up, then `REPS` times; returns the median MB/s over `bytes`. */
function measure(
  bytes: number,
  fn: () => number,
  expect: number,
): { mbps: number; min: number; max: number } {
  collectGarbage();
  if (fn() !== expect) throw new Error("warm-up run gave a different result");
  const rates: number[] = [];
  for (let i = 0; i < REPS; i++) {
    const t0 = performance.now();
    const got = fn();
    const ms = performance.now() - t0;
    if (got !== expect) throw new Error(`run ${i} gave ${got}, expected ${expect}`);
    rates.push(bytes / 1e6 / (ms / 1e3));
  }
  return { mbps: median(rates), min: Math.min(...rates), max: Math.max(...rates) };
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "walship-bench-"));
try {
  console.log(
    `# WAL scan benchmark: ${runtime}, ${REPS} runs each (median, [min–max]), MB/s = 10^6 bytes/s`,
  );
  console.log("");
  console.log("| page size | WAL MiB | checksums | what | source | median MB/s | min–max |");
  console.log("|---:|---:|---|---|---|---:|---|");
  for (const pageSize of PAGE_SIZES) {
    const lePath = makeWal(dir, pageSize, MIB);
    const le = new Uint8Array(fs.readFileSync(lePath));
    const be = toBigEndian(le);
    const bePath = path.join(dir, `wal-${pageSize}-be`);
    fs.writeFileSync(bePath, be);
    const frameSize = WAL_FRAME_HEADER_SIZE + pageSize;
    const frames = (le.length - WAL_HEADER_SIZE) / frameSize;
    if (!Number.isInteger(frames)) throw new Error("WAL is not whole frames");
    const mib = (le.length / (1 << 20)).toFixed(1);

    for (const [order, bytes, file] of [["little", le, lePath], ["big", be, bePath]] as const) {
      const bigEndian = order === "big";
      const header = readWalHeader(bytesSource(bytes))!;
      if (header.bigEndian !== bigEndian || frameOffset(frames + 1, pageSize) !== bytes.length) {
        throw new Error("unexpected WAL header");
      }
      const rows: [string, string, () => number][] = [
        ["checksum chain", "memory", () => checksumChain(bytes, pageSize, bigEndian)],
        ["scanFrames", "memory", () => scanFrames(bytesSource(bytes), header, null).lastValidFrame],
        ["scanFrames collect, 16 MiB batches", "memory", () => scanInBatches(bytes, header)],
        ["scanFrames", "file", () => {
          const f = openReadOnly(file)!;
          try {
            return scanFrames(f, header, null).lastValidFrame;
          } finally {
            f.close();
          }
        }],
      ];
      for (const [what, source, fn] of rows) {
        const r = measure(bytes.length, fn, frames);
        console.log(
          `| ${pageSize} | ${mib} | ${order}-endian | ${what} | ${source} | ${
            r.mbps.toFixed(0)
          } | ` +
            `${r.min.toFixed(0)}–${r.max.toFixed(0)} |`,
        );
      }
    }
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
