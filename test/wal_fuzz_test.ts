/**
 * Property test over random damage to real WALs (seeded, bounded): bit
 * flips, byte overwrites, truncations, duplicated and swapped frames,
 * zeroed ranges. The scanner never throws or loops, never returns a
 * transaction that reaches the first damaged frame, and every transaction
 * it returns is the same one the undamaged WAL gives. A sample is checked
 * against SQLite's own recovery.
 */

import assert from "node:assert/strict";
import path from "node:path";
import {
  type ByteSource,
  bytesSource,
  readWalHeader,
  scanFrames,
  type WalPosition,
  type WalScan,
  type WalTransaction,
} from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import {
  bulkInsert,
  DB_NAME,
  type DbFiles,
  FRAME_HEADER,
  frameAt,
  frameOfByte,
  insertRows,
  placeDb,
  readDbFiles,
  runSession,
  sqliteViews,
  standardSteps,
  WAL_HEADER,
} from "./_wal_fixtures.ts";
import { between, prng, withTempDir } from "./_util.ts";

const ITERATIONS = 400;
const SQLITE_SAMPLE = 40;
const SEED = 0x5eed;

interface Base {
  name: string;
  files: DbFiles;
  pageSize: number;
  scan: WalScan;
}

/** Two real WALs: one with an uncommitted spilled tail, one restarted over stale frames. */
async function bases(dir: string): Promise<Base[]> {
  const a = path.join(dir, "a");
  await runSession("runtime", path.join(dir, "live-a", DB_NAME), {
    pageSize: 512,
    cacheSize: 10,
    steps: [
      ...standardSteps(81, 14, 3, 20, 900),
      { sql: "BEGIN" },
      { sql: bulkInsert(99, 40, 400) },
      { sql: "ROLLBACK" },
      { copy: a },
    ],
  });
  const b = path.join(dir, "b");
  await runSession("python", path.join(dir, "live-b", DB_NAME), {
    pageSize: 1024,
    steps: [
      ...standardSteps(82, 12, 3, 50, 2500),
      { sql: "PRAGMA wal_checkpoint(RESTART)" },
      { tx: insertRows(prng(83), 13, 4, 600) },
      { tx: insertRows(prng(84), 14, 2, 1500) },
      { copy: b },
    ],
  });
  const all = [
    { name: "spilled tail, page 512", dir: a, pageSize: 512 },
    { name: "restarted epoch, page 1024", dir: b, pageSize: 1024 },
  ].map(({ name, dir, pageSize }) => {
    const files = readDbFiles(dir);
    const scan = scanAll(bytesSource(files.wal), { collect: true }).scan;
    assert.ok(scan);
    return { name, files, pageSize, scan };
  });
  // Each base has frames past its last commit that must never be returned.
  assert.equal(all[0].scan.transactions.length, 15);
  assert.ok(all[0].scan.lastValidFrame > all[0].scan.position.frame + 10, "an uncommitted tail");
  assert.equal(all[1].scan.transactions.length, 2);
  assert.equal(all[1].scan.stop, "salt", "stale frames of the old epoch");
  assert.ok(all[1].files.wal.length > frameAt(all[1].scan.lastValidFrame + 20, 1024));
  return all;
}

/** A source that fails the test instead of letting a scan read forever. */
function boundedSource(bytes: Uint8Array, maxReads: number): ByteSource {
  const inner = bytesSource(bytes);
  let reads = 0;
  return {
    read(into, offset, length) {
      if (++reads > maxReads) throw new Error(`more than ${maxReads} reads: the scan does not end`);
      return inner.read(into, offset, length);
    },
  };
}

/** A full scan, in pieces when maxBytes is given; null scan when there is no valid header. */
function scanAll(
  source: ByteSource,
  options: { collect?: boolean; chunkSize?: number; maxBytes?: number },
): { scan: WalScan | null; transactions: WalTransaction[] } {
  const header = readWalHeader(source);
  if (!header) return { scan: null, transactions: [] };
  const transactions: WalTransaction[] = [];
  let from: WalPosition | null = null;
  for (let pieces = 0;; pieces++) {
    assert.ok(pieces < 10_000, "maxBytes scans do not end");
    const scan = scanFrames(source, header, from, options);
    transactions.push(...scan.transactions);
    if (scan.stop !== "limit") return { scan, transactions };
    from = scan.position;
  }
}

type Mutation = { kind: string; apply: (wal: Uint8Array) => Uint8Array };

function mutation(rand: () => number, wal: Uint8Array, pageSize: number): Mutation {
  const frameSize = FRAME_HEADER + pageSize;
  const frames = Math.floor((wal.length - WAL_HEADER) / frameSize);
  const anyFrame = () => between(rand, 1, frames);
  // Damage lands in the header now and then, mostly in frames.
  const anyOffset = () => (rand() % 20 === 0 ? rand() % WAL_HEADER : rand() % wal.length);
  switch (rand() % 7) {
    case 0: {
      const at = anyOffset();
      const bit = rand() % 8;
      return { kind: `flip bit ${bit} of byte ${at}`, apply: (w) => ((w[at] ^= 1 << bit), w) };
    }
    case 1: {
      const at = anyOffset();
      const n = between(rand, 1, 16);
      const bytes = Array.from({ length: n }, () => rand() & 0xff);
      return {
        kind: `overwrite ${n} bytes at ${at}`,
        apply: (w) => (w.set(bytes.slice(0, w.length - at), at), w),
      };
    }
    case 2: {
      const at = rand() % wal.length;
      return { kind: `truncate to ${at}`, apply: (w) => w.slice(0, at) };
    }
    case 3: {
      const i = anyFrame();
      const j = anyFrame();
      return {
        kind: `copy frame ${i} over frame ${j}`,
        apply: (
          w,
        ) => (w.set(
          wal.subarray(frameAt(i, pageSize), frameAt(i + 1, pageSize)),
          frameAt(j, pageSize),
        ),
          w),
      };
    }
    case 4: {
      const i = anyFrame();
      return {
        kind: `duplicate frame ${i} in place`,
        apply: (w) => {
          const out = new Uint8Array(w.length + frameSize);
          out.set(w.subarray(0, frameAt(i + 1, pageSize)));
          out.set(w.subarray(frameAt(i, pageSize)), frameAt(i + 1, pageSize));
          return out;
        },
      };
    }
    case 5: {
      const i = anyFrame();
      const j = anyFrame();
      return {
        kind: `swap frames ${i} and ${j}`,
        apply: (w) => {
          const fi = wal.subarray(frameAt(i, pageSize), frameAt(i + 1, pageSize));
          const fj = wal.subarray(frameAt(j, pageSize), frameAt(j + 1, pageSize));
          w.set(fj, frameAt(i, pageSize));
          w.set(fi, frameAt(j, pageSize));
          return w;
        },
      };
    }
    default: {
      const at = anyOffset();
      const n = between(rand, 1, 2 * frameSize);
      return { kind: `zero ${n} bytes at ${at}`, apply: (w) => (w.fill(0, at, at + n), w) };
    }
  }
}

/** The first byte where `b` differs from `a` (a shorter file differs where it ends); Infinity if equal. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? Infinity : n;
}

test(`fuzz: ${ITERATIONS} random mutations of real WALs never yield a damaged or foreign transaction`, async () => {
  await withTempDir("fuzz", async (dir) => {
    const all = await bases(dir);
    const rand = prng(SEED);
    const started = Date.now();
    const sample: { db: string; expect: number; label: string }[] = [];
    const kinds = new Map<string, number>();
    let damagedFrames = 0;

    for (let iter = 0; iter < ITERATIONS; iter++) {
      const base = all[rand() % all.length];
      const frameSize = FRAME_HEADER + base.pageSize;
      const m = mutation(rand, base.files.wal, base.pageSize);
      const wal = m.apply(base.files.wal.slice());
      const label = `iteration ${iter} (${base.name}): ${m.kind}`;
      const kind = m.kind.split(" ")[0];
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);

      const diff = firstDifference(base.files.wal, wal);
      const firstMutated = diff === Infinity ? Infinity : frameOfByte(diff, base.pageSize);
      const options = {
        collect: true,
        chunkSize: [1, 3 * frameSize, 1 << 20][rand() % 3],
        maxBytes: rand() % 2 === 0 ? undefined : between(rand, 1, 8 * frameSize),
      };
      const maxReads = 8 + 4 * Math.ceil(wal.length / frameSize);
      let result: ReturnType<typeof scanAll>;
      try {
        result = scanAll(boundedSource(wal, maxReads), options);
      } catch (err) {
        assert.fail(`${label}: threw ${err}`);
      }

      const expected = base.scan.transactions.filter((t) => t.lastFrame < firstMutated);
      if (firstMutated === 0) {
        assert.equal(result.scan, null, `${label}: a damaged header is no WAL`);
      } else {
        assert.ok(result.scan, label);
        const lastValid = Math.min(base.scan.lastValidFrame, firstMutated - 1);
        assert.equal(result.scan.lastValidFrame, lastValid, `${label}: last valid frame`);
        if (firstMutated <= base.scan.lastValidFrame) damagedFrames++;
      }
      for (const tx of result.transactions) {
        assert.ok(
          tx.lastFrame < firstMutated,
          `${label}: transaction ${tx.firstFrame}..${tx.lastFrame} reaches damaged frame ${firstMutated}`,
        );
      }
      assert.deepEqual(result.transactions, expected, label);

      if (iter % Math.floor(ITERATIONS / SQLITE_SAMPLE) === 0) {
        sample.push({
          db: placeDb(dir, base.files.dbFile, wal),
          expect: expected.at(-1)?.lastFrame ?? 0,
          label,
        });
      }
    }
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 20_000, `${ITERATIONS} iterations took ${elapsed} ms`);
    assert.equal(kinds.size, 7, `every kind of mutation ran: ${[...kinds.keys()]}`);
    assert.ok(damagedFrames > ITERATIONS / 4, `${damagedFrames} mutations hit a valid frame`);

    // SQLite's recovery keeps exactly the frames we accept, on a sample of the mutations.
    const views = sqliteViews(sample.map((s) => s.db));
    sample.forEach((s, i) => assert.equal(views[i].log, s.expect, `SQLite on ${s.label}`));
  });
});
