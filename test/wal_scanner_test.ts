/**
 * The incremental scanner on a live WAL and on real WAL bytes: scanning on
 * from a returned position, splitting by maxBytes, collecting raw frames,
 * and proving a recorded position with verifyPosition.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { openReadOnly } from "../src/capture/file_source.ts";
import {
  bytesSource,
  readWalHeader,
  scanFrames,
  type ScanOptions,
  verifyPosition,
  type WalPosition,
  type WalScan,
  type WalTransaction,
} from "../src/sqlite/wal_scanner.ts";
import { openSqlite, test } from "./_runtime.ts";
import {
  CREATE_TABLE,
  DB_NAME,
  flipBit,
  FRAME_HEADER,
  frameAt,
  insertRows,
  readDbFiles,
  runSession,
  standardSteps,
} from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

const PAGE = 1024;
const FRAME = FRAME_HEADER + PAGE;

function positionAfter(tx: WalTransaction, salts: { salt1: number; salt2: number }): WalPosition {
  return { ...salts, frame: tx.lastFrame, checksum1: tx.checksum1, checksum2: tx.checksum2 };
}

/** Scans to the end in pieces of at most `maxBytes`, checking each piece stops where it should. */
function scanInPieces(
  wal: Uint8Array,
  options: ScanOptions,
): { scans: WalScan[]; transactions: WalTransaction[] } {
  const source = bytesSource(wal);
  const header = readWalHeader(source)!;
  const scans: WalScan[] = [];
  let from: WalPosition | null = null;
  for (let i = 0; i < 10_000; i++) {
    const scan = scanFrames(source, header, from, options);
    scans.push(scan);
    if (scan.stop !== "limit") break;
    from = scan.position;
  }
  return { scans, transactions: scans.flatMap((s) => s.transactions) };
}

async function realWal(dir: string, seed: number, count: number): Promise<Uint8Array> {
  const copy = path.join(dir, "copy");
  await runSession("cli", path.join(dir, "live", DB_NAME), {
    pageSize: PAGE,
    steps: [...standardSteps(seed, count, 3, 50, 3000), { copy }],
  });
  return readDbFiles(copy).wal;
}

test("incremental: scanning on from a returned position after more commits returns exactly the new transactions", async () => {
  await withTempDir("incremental", async (dir) => {
    const db = path.join(dir, DB_NAME);
    const con = await openSqlite(db);
    const rand = prng(41);
    const pageCounts: number[] = [];
    const commit = (tx: number) => {
      con.exec("BEGIN");
      for (const s of tx === 0 ? [CREATE_TABLE] : insertRows(rand, tx, 3, 100, 2500)) con.exec(s);
      con.exec("COMMIT");
      pageCounts.push(Number(Object.values(con.all("PRAGMA page_count")[0])[0]));
    };
    let wal = null;
    try {
      con.exec(`PRAGMA page_size=${PAGE}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;`);
      for (let tx = 0; tx < 5; tx++) commit(tx);
      wal = openReadOnly(db + "-wal")!;
      const header = readWalHeader(wal)!;
      const first = scanFrames(wal, header, null);
      assert.equal(first.fromStart, true);
      assert.equal(first.transactions.length, 5);
      assert.equal(first.stop, "end");

      for (let tx = 5; tx < 9; tx++) commit(tx);
      assert.equal(readWalHeader(wal)!.salt1, header.salt1, "same epoch");
      const second = scanFrames(wal, header, first.position);
      assert.equal(second.fromStart, false);
      assert.equal(second.transactions.length, 4);
      assert.equal(second.transactions[0].firstFrame, first.position.frame + 1);
      assert.deepEqual(second.transactions.map((t) => t.dbSize), pageCounts.slice(5));

      const whole = scanFrames(wal, header, null);
      assert.equal(whole.transactions.length, 9);
      assert.deepEqual([...first.transactions, ...second.transactions], whole.transactions);
      assert.deepEqual(second.position, whole.position);
      assert.equal(second.lastValidFrame, whole.lastValidFrame);
      assert.equal(whole.position.frame, (wal.size() - 32) / FRAME);

      const third = scanFrames(wal, header, second.position);
      assert.deepEqual(third.transactions, []);
      assert.deepEqual(third.position, second.position);
      assert.equal(third.stop, "end");
    } finally {
      wal?.close();
      con.close();
    }
  });
});

test("incremental: maxBytes splits a scan into several without losing or repeating a transaction", async () => {
  await withTempDir("max-bytes", async (dir) => {
    const wal = await realWal(dir, 42, 14);
    const whole = scanFrames(bytesSource(wal), readWalHeader(bytesSource(wal))!, null);
    assert.equal(whole.transactions.length, 15);

    // maxBytes 1: exactly one transaction per scan, then an empty one that reached the end.
    const one = scanInPieces(wal, { maxBytes: 1 });
    assert.equal(one.scans.length, 16);
    for (const s of one.scans.slice(0, 15)) {
      assert.equal(s.stop, "limit");
      assert.equal(s.transactions.length, 1);
      assert.equal(s.lastValidFrame, s.position.frame);
    }
    assert.deepEqual(one.scans[15].transactions, []);
    assert.equal(one.scans[15].stop, "end");
    assert.deepEqual(one.transactions, whole.transactions);

    for (const maxBytes of [3 * FRAME, 5 * FRAME + 7, 20 * FRAME]) {
      for (const chunkSize of [1, 2 * FRAME, 1 << 20]) {
        const pieces = scanInPieces(wal, { maxBytes, chunkSize, collect: true });
        const label = `maxBytes ${maxBytes} chunkSize ${chunkSize}`;
        assert.deepEqual(
          pieces.transactions.map(({ frames: _, ...t }) => t),
          whole.transactions,
          label,
        );
        assert.ok(pieces.scans.length > 2, label);
        for (const s of pieces.scans) {
          const sizes = s.transactions.map((t) => t.end - t.offset);
          const total = sizes.reduce((a, b) => a + b, 0);
          if (s.stop === "limit") {
            // It stopped at the first transaction that reached the limit, not later.
            assert.ok(total >= maxBytes && total - sizes.at(-1)! < maxBytes, label);
          } else {
            assert.ok(total < maxBytes, label);
          }
        }
      }
    }
  });
});

test("collect: each transaction's frames are the exact WAL bytes at [offset, end), whatever the chunk size", async () => {
  await withTempDir("collect", async (dir) => {
    const wal = await realWal(dir, 43, 8);
    const header = readWalHeader(bytesSource(wal))!;
    const plain = scanFrames(bytesSource(wal), header, null);
    for (const tx of plain.transactions) assert.equal(tx.frames, undefined);
    for (const chunkSize of [1, FRAME, 3 * FRAME + 100, 1 << 20]) {
      const scan = scanFrames(bytesSource(wal), header, null, { collect: true, chunkSize });
      assert.equal(scan.transactions.length, 9);
      for (const tx of scan.transactions) {
        assert.equal(tx.frames!.length, (tx.lastFrame - tx.firstFrame + 1) * FRAME);
        assert.deepEqual(
          tx.frames,
          wal.subarray(tx.offset, tx.end),
          `chunk ${chunkSize}, frames ${tx.firstFrame}..${tx.lastFrame}`,
        );
      }
      assert.deepEqual(scan.transactions.map(({ frames: _, ...t }) => t), plain.transactions);
    }
  });
});

test("verifyPosition: true for a real position; false after a flipped bit, a changed salt, or in another epoch", async () => {
  await withTempDir("verify", async (dir) => {
    const before = path.join(dir, "before");
    const after = path.join(dir, "after");
    await runSession("python", path.join(dir, "live", DB_NAME), {
      pageSize: PAGE,
      steps: [
        ...standardSteps(44, 7, 3, 100, 2500),
        { copy: before },
        { sql: "PRAGMA wal_checkpoint(RESTART)" },
        { tx: insertRows(prng(45), 8, 40, 900) },
        { copy: after },
      ],
    });
    const wal = readDbFiles(before).wal;
    const source = bytesSource(wal);
    const header = readWalHeader(source)!;
    const scan = scanFrames(source, header, null);
    const salts = { salt1: header.salt1, salt2: header.salt2 };
    assert.equal(scan.transactions.length, 8);

    for (const tx of scan.transactions) {
      assert.equal(verifyPosition(source, header, positionAfter(tx, salts)), true);
    }
    assert.equal(verifyPosition(source, header, scan.position), true);
    assert.equal(
      verifyPosition(source, header, {
        ...salts,
        frame: 0,
        checksum1: header.checksum1,
        checksum2: header.checksum2,
      }),
      true,
    );

    const pos = positionAfter(scan.transactions[4], salts);
    const at = frameAt(pos.frame, PAGE);
    const falses: [string, Uint8Array, WalPosition][] = [
      ["a bit flipped in its page", flipBit(wal, at + FRAME_HEADER + 333, 6), pos],
      ["a bit flipped in its page number", flipBit(wal, at + 3, 0), pos],
      ["a bit flipped in its stored checksum", flipBit(wal, at + 21, 2), pos],
      ["a bit flipped in its salt", flipBit(wal, at + 9, 4), pos],
      ["the position's salt-2 changed", wal, { ...pos, salt2: (pos.salt2 ^ 1) >>> 0 }],
      ["the position's salt-1 changed", wal, { ...pos, salt1: (pos.salt1 + 1) >>> 0 }],
      ["the position's checksum changed", wal, {
        ...pos,
        checksum1: (pos.checksum1 ^ 0x100) >>> 0,
      }],
      ["a position past the end of the file", wal, {
        ...pos,
        frame: (wal.length - 32) / FRAME + 1,
      }],
      ["the WAL cut inside that frame", wal.subarray(0, at + 100), pos],
    ];
    for (const [why, bytes, p] of falses) {
      assert.equal(verifyPosition(bytesSource(bytes), header, p), false, why);
    }

    // The WAL restarted: a position of the old epoch is refused, whether the new epoch
    // overwrote its frame (early) or the frame is still on disk behind it (the last one).
    const now = readDbFiles(after).wal;
    const newHeader = readWalHeader(bytesSource(now))!;
    const newScan = scanFrames(bytesSource(now), newHeader, null);
    assert.equal(newHeader.salt1, (header.salt1 + 1) >>> 0);
    const early = positionAfter(scan.transactions[1], salts);
    assert.ok(newScan.position.frame < scan.position.frame);
    assert.equal(
      verifyPosition(bytesSource(now), newHeader, scan.position),
      false,
      "old position, new epoch",
    );
    assert.equal(
      verifyPosition(bytesSource(now), newHeader, early),
      false,
      "old position, new epoch",
    );
    assert.equal(verifyPosition(bytesSource(now), newHeader, newScan.position), true);
  });
});

test("scanner: a scan from a position in the same epoch beyond the file's end finds nothing and keeps the position", async () => {
  await withTempDir("beyond", async (dir) => {
    const wal = await realWal(dir, 46, 2);
    const header = readWalHeader(bytesSource(wal))!;
    const scan = scanFrames(bytesSource(wal), header, null);
    const beyond = { ...scan.position, frame: scan.position.frame + 5 };
    const again = scanFrames(bytesSource(wal), header, beyond);
    assert.equal(again.fromStart, false);
    assert.deepEqual(again.transactions, []);
    assert.deepEqual(again.position, beyond);
    assert.equal(again.stop, "end");
  });
});
