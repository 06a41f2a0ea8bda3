/**
 * What many small snapshots taken at once cost in memory, as a replicator
 * with hundreds of databases takes them at start (workload 5): N
 * concurrent writeSnapshotObject calls over one small image file, with the
 * process's RSS sampled every 2 ms. Prints the peak and the wall time.
 * docs/BENCHMARKS.md, session 11.
 *
 *   node_modules/.bin/bun scripts/bench_snapshots_rss.ts [N] [PAGES] [ROOT]
 *
 * N defaults to 550, PAGES (4 KiB pages per image) to 2. ROOT is the
 * checkout whose src/ is measured (default: this one); to measure an older
 * commit, `git worktree add /tmp/wt REV`, link this checkout's
 * node_modules into it, and pass /tmp/wt.
 *
 * @module
 */

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";

const [nArg, pagesArg, rootArg] = process.argv.slice(2);
const n = Number(nArg ?? 550);
const pages = Number(pagesArg ?? 2);
const root = path.resolve(rootArg ?? path.join(import.meta.dirname ?? ".", ".."));
const { writeSnapshotObject } = await import(path.join(root, "src/replicate/snapshot_object.ts"));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "walship-snapshots-rss-"));
const image = path.join(dir, "image");
fs.writeFileSync(image, new Uint8Array(pages * 4096).map((_, i) => (i * 7) % 251));
const meta = {
  kind: "snapshot",
  generation: "20261122T000000000Z-00000000",
  pageSize: 4096,
  txid: 1,
  time: 1,
  position: null,
  bigEndian: false,
  dbSize: pages,
};
let peak = 0;
const timer = setInterval(() => peak = Math.max(peak, process.memoryUsage().rss), 2);
const t0 = performance.now();
await Promise.all(Array.from({ length: n }, (_, i) => writeSnapshotObject(image, meta, path.join(dir, `o${i}`))));
clearInterval(timer);
console.log(
  `${root}: ${n} snapshots of ${pages} pages at once, peak RSS ${(peak / 1048576).toFixed(0)} MiB, ` +
    `${(performance.now() - t0).toFixed(0)} ms`,
);
fs.rmSync(dir, { recursive: true, force: true });
