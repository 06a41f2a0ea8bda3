/**
 * zstd for segment pieces, two ways: `zlib.zstdCompressSync` (a fresh
 * output buffer per piece) and walship's ZstdPieceEncoder (one reused
 * buffer). Compresses FILE in 4 MiB pieces five times over and prints the
 * time and how much the process's RSS grew. docs/BENCHMARKS.md, session 10.
 *
 *   node_modules/.bin/bun scripts/bench_zstd_encode.ts FILE sync|encoder
 *   node_modules/.bin/deno run -A scripts/bench_zstd_encode.ts FILE sync|encoder
 *
 * @module
 */

import fs from "node:fs";
import process from "node:process";
import { zstdCompress, ZstdPieceEncoder } from "../src/replica/zstd.ts";

const [file, mode] = process.argv.slice(2);
if (!file || (mode !== "sync" && mode !== "encoder")) {
  console.error("usage: bench_zstd_encode.ts FILE sync|encoder");
  process.exit(2);
}
const data = fs.readFileSync(file);
const PIECE = 4 << 20;
const rssMiB = () => process.memoryUsage().rss / 1048576;
const encoder = mode === "encoder" ? new ZstdPieceEncoder() : null;
const before = rssMiB();
const t0 = performance.now();
let total = 0;
for (let round = 0; round < 5; round++) {
  for (let at = 0; at + PIECE <= data.length; at += PIECE) {
    const piece = data.subarray(at, at + PIECE);
    total += (encoder ? encoder.compress(piece) : zstdCompress(piece)).length;
  }
}
const ms = performance.now() - t0;
console.log(`${mode}: ${ms.toFixed(0)} ms, RSS +${(rssMiB() - before).toFixed(0)} MiB, ${total} bytes out`);
