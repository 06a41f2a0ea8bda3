/**
 * The 'P' heal record, pure (docs/FORMAT.md): it encodes and decodes
 * exactly (pages, db size, WAL position or none, checksum byte order) in the
 * documented layout, a record cut short is CORRUPT; and a restore through
 * heals, from a replica built by hand with the real SegmentBuilder, gives
 * exactly the expected image at every txid: a heal that grows the database,
 * WAL frames whose checksum chain goes on from the heal's position, a heal
 * that shrinks it (the file is truncated) and a new epoch after a heal with
 * no WAL position. A segment that does not start at the heal's position, or
 * a malformed heal page, is refused.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { WalshipError } from "../src/errors.ts";
import { newGenerationId, segmentKey, snapshotKey } from "../src/replica/layout.ts";
import { decodeObject, type SegmentMeta } from "../src/replica/object_format.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { decodeSegmentBody, encodeSegmentBody, type SegmentRecord, TAG_HEAL } from "../src/replica/segment.ts";
import { zstdDecompress } from "../src/replica/zstd.ts";
import { SegmentBuilder, segmentBytes } from "../src/replicate/segment_builder.ts";
import { writeSnapshotObject } from "../src/replicate/snapshot_object.ts";
import { type ApplyState, applySegment, LastVersions } from "../src/restore/apply.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { encodeWalHeader } from "../src/sqlite/wal.ts";
import type { WalPosition } from "../src/sqlite/wal_scanner.ts";
import { test } from "./_runtime.ts";
import { commitFrame } from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

const PAGE = 512;
const rand = prng(20261121);

function randomPage(): Uint8Array {
  const p = new Uint8Array(PAGE);
  for (let i = 0; i < PAGE; i += 4) new DataView(p.buffer).setUint32(i, rand());
  return p;
}

function isCorrupt(err: unknown): boolean {
  return err instanceof WalshipError && err.code === "CORRUPT";
}

test("a 'P' record encodes and decodes exactly: pages, db size, position or none, byte order", () => {
  const position: WalPosition = { salt1: 0xdeadbeef, salt2: 1, frame: 0xffffffff, checksum1: 0x80000000, checksum2: 0 };
  const records: SegmentRecord[] = [
    { tag: "heal", dbSize: 7, time: 1763731234567.25, position: null, bigEndian: false, pages: [1, 7].map((pgno) => ({ pgno, page: randomPage() })) },
    { tag: "transaction", firstFrame: 1, frameCount: 1, time: 1763731234568, frames: new Uint8Array(24 + PAGE).fill(7) },
    { tag: "heal", dbSize: 0xfffffffe, time: 1763731234569.5, position, bigEndian: true, pages: [{ pgno: 0xfffffff0, page: randomPage() }] },
    { tag: "heal", dbSize: 3, time: 1, position: { ...position, frame: 0 }, bigEndian: false, pages: [] },
  ];
  const body = encodeSegmentBody(records);
  assert.equal(body.length, (1 + 37 + 2 * (4 + PAGE)) + (1 + 16 + 24 + PAGE) + (1 + 37 + 4 + PAGE) + (1 + 37));
  assert.deepStrictEqual([...decodeSegmentBody(body, PAGE, "body")], records);

  // The layout docs/FORMAT.md gives, big-endian.
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  assert.equal(body[0], TAG_HEAL);
  assert.equal(v.getUint32(1), 7, "u32 db size");
  assert.equal(v.getFloat64(5), 1763731234567.25, "f64 observed time");
  assert.equal(v.getUint32(13), 2, "u32 page count");
  assert.equal(body[17], 0, "flags: no position, little-endian");
  assert.equal(v.getUint32(38), 1, "first page number");
  assert.deepEqual(body.subarray(42, 42 + PAGE), records[0].tag === "heal" ? records[0].pages[0].page : null);
  const third = (1 + 37 + 2 * (4 + PAGE)) + (1 + 16 + 24 + PAGE);
  assert.equal(body[third + 17], 3, "flags: a position follows, big-endian");
  assert.deepEqual(
    [18, 22, 26, 30, 34].map((o) => v.getUint32(third + o)),
    [position.salt1, position.salt2, position.frame, position.checksum1, position.checksum2],
  );
  assert.equal(v.getUint32(third + 38), 0xfffffff0);

  // Cut anywhere inside a heal record: CORRUPT, never a shorter heal.
  for (const cut of [1, 10, 37, 38 + 3, 38 + 4 + PAGE - 1, 38 + 2 * (4 + PAGE) - 1]) {
    assert.throws(() => [...decodeSegmentBody(body.subarray(0, cut), PAGE, "cut")], isCorrupt, `cut at ${cut}`);
  }

  // In parts (as pieces decompress), split anywhere, even inside a field or a page: the same records;
  // and parts that stop inside a record are CORRUPT.
  const r = prng(11);
  for (let k = 0; k < 200; k++) {
    const cuts = [...new Set([0, body.length, ...Array.from({ length: 1 + (r() % 4) }, () => r() % body.length)])]
      .sort((a, b) => a - b);
    const parts = cuts.slice(1).map((c, i) => body.subarray(cuts[i], c));
    assert.deepStrictEqual([...decodeSegmentBody(parts, PAGE, "parts")], records, `split at ${cuts.join(",")}`);
    const short = parts.slice(0, -1).concat(parts.at(-1)!.subarray(0, Math.max(0, parts.at(-1)!.length - 1 - (r() % 30))));
    assert.throws(() => [...decodeSegmentBody(short, PAGE, "cut")], isCorrupt, `parts ${cuts.join(",")}, cut short`);
  }
});

/** An image of `pages` pages, as a copy. */
const image = (pages: Uint8Array[]) => pages.map((p) => p.slice());
const bytesOf = (pages: Uint8Array[]) => Buffer.concat(pages);

test("restores through heals: grows, chains on from the heal's position, shrinks, and a new epoch after it", () =>
  withTempDir("heal-apply", async (dir) => {
    const storage = openReplica(pathToFileURL(path.join(dir, "replica")).href);
    const t0 = Date.UTC(2026, 10, 21);
    const generation = newGenerationId(t0 - 1000);
    const expected: Uint8Array[][] = [];

    // txid 1: a snapshot of 8 pages standing for WAL frame 3 of an epoch.
    const p0: WalPosition = { salt1: 11, salt2: 22, frame: 3, checksum1: 0x1234, checksum2: 0x5678 };
    expected[1] = Array.from({ length: 8 }, randomPage);
    const imagePath = path.join(dir, "image");
    fs.writeFileSync(imagePath, bytesOf(expected[1]));
    const objectPath = path.join(dir, "snapshot");
    await writeSnapshotObject(imagePath, {
      kind: "snapshot", generation, pageSize: PAGE, txid: 1, time: t0, position: p0, bigEndian: false, dbSize: 8,
    }, objectPath);
    await storage.put(snapshotKey(generation, 1, t0), fs.readFileSync(objectPath));

    const builder = new SegmentBuilder(1, p0, 8, false);
    const segments: SegmentMeta[] = [];
    const ship = async () => {
      const seg = builder.build(generation, PAGE);
      await storage.put(segmentKey(generation, seg.meta), segmentBytes(seg));
      segments.push(seg.meta);
      builder.commit();
    };

    // txid 2: a frame of the snapshot's epoch; txid 3: a heal that grows the database to 12 pages.
    const x = randomPage();
    let f = commitFrame(p0, 2, 8, x, false, t0 + 2000);
    builder.add([f.tx], null);
    expected[2] = image(expected[1]);
    expected[2][1] = x;
    const grown = [3, 9, 10, 11, 12].map((pgno) => ({ pgno, page: randomPage() }));
    const p1: WalPosition = { salt1: 12, salt2: 0x9abcdef0, frame: 2, checksum1: 0xfedcba98, checksum2: 77 };
    builder.addHeal({ dbSize: 12, time: t0 + 3000, position: p1, bigEndian: true, pages: grown });
    expected[3] = image(expected[2]);
    for (const { pgno, page } of grown) expected[3][pgno - 1] = page;
    await ship();

    // txid 4: frame 3 of the healed epoch, big-endian, chained from the heal's checksums;
    // txid 5: a heal that shrinks the database to 5 pages and stands for no WAL at all.
    const y = randomPage();
    f = commitFrame(p1, 12, 12, y, true, t0 + 4000);
    builder.add([f.tx], null);
    expected[4] = image(expected[3]);
    expected[4][11] = y;
    const z = randomPage();
    builder.addHeal({ dbSize: 5, time: t0 + 5000, position: null, bigEndian: false, pages: [{ pgno: 1, page: z }] });
    expected[5] = image(expected[4]).slice(0, 5);
    expected[5][0] = z;
    await ship();

    // txid 6: a new WAL epoch after the position-less heal.
    const header = encodeWalHeader({ bigEndian: false, pageSize: PAGE, checkpointSeq: 4, salt1: 13, salt2: 44 });
    const hv = new DataView(header.buffer);
    const p2: WalPosition = { salt1: 13, salt2: 44, frame: 0, checksum1: hv.getUint32(24), checksum2: hv.getUint32(28) };
    const w = randomPage();
    f = commitFrame(p2, 5, 5, w, false, t0 + 6000);
    builder.add([f.tx], header);
    expected[6] = image(expected[5]);
    expected[6][4] = w;
    await ship();

    assert.deepEqual(segments.map((s) => [s.firstTxid, s.lastTxid, s.dbSize]), [[2, 3, 12], [4, 5, 5], [6, 6, 5]]);
    assert.deepEqual(segments[1].start, p1, "the segment after a heal starts at the heal's position");
    assert.equal(segments[1].bigEndian, true, "…with the heal's byte order");
    assert.equal(segments[2].start, null);

    const out = path.join(dir, "out.db");
    for (let txid = 1; txid <= 6; txid++) {
      const r = await restoreDatabase({ storage, output: out, target: { txid }, force: true });
      assert.equal(r.txid, txid);
      assert.equal(r.pages, expected[txid].length);
      assert.ok(fs.readFileSync(out).equals(bytesOf(expected[txid])), `txid ${txid} restores the expected image`);
    }
    const latest = await restoreDatabase({ storage, output: out, force: true });
    assert.equal(latest.txid, 6);
    assert.equal(fs.statSync(out).size, 5 * PAGE);
    const justBefore = await restoreDatabase({ storage, output: out, target: { timestamp: t0 + 2999 }, force: true });
    assert.equal(justBefore.txid, 2, "a time before the heal was observed gives the state before it");
    assert.ok(fs.readFileSync(out).equals(bytesOf(expected[2])));
    const atHeal = await restoreDatabase({ storage, output: out, target: { timestamp: t0 + 5000 }, force: true });
    assert.equal(atHeal.txid, 5);
    assert.ok(fs.readFileSync(out).equals(bytesOf(expected[5])), "the shrinking heal truncates the file");

    // applySegment refuses the segment after a heal when the state is not at the heal's position…
    const second = segmentKey(generation, segments[1]);
    const { meta, payload } = decodeObject(await storage.get(second), second);
    const body = zstdDecompress(payload);
    const fd = fs.openSync(path.join(dir, "scratch"), "w+");
    const pages = new LastVersions(fd, PAGE);
    try {
      const state = (): ApplyState => ({ position: p1, bigEndian: true, pageSize: PAGE, dbSize: 12, txid: 3, time: 0 });
      const limit = { txid: null, timestamp: null };
      assert.throws(() => applySegment(pages, { ...state(), position: f.pos }, meta as SegmentMeta, body, limit, "s"), /does not start where/);
      const littleEndian = { ...meta, bigEndian: false } as SegmentMeta;
      assert.throws(() => applySegment(pages, state(), littleEndian, body, limit, "s"), /checksum chain/, "the heal's byte order counts");
      // …and a heal page numbered 0.
      const bad = encodeSegmentBody([...decodeSegmentBody(body, PAGE, "s")].map((r) =>
        r.tag === "heal" ? { ...r, pages: [{ pgno: 0, page: r.pages[0].page }] } : r
      ));
      assert.throws(() => applySegment(pages, state(), { ...meta, bodySize: bad.length } as SegmentMeta, bad, limit, "s"), /malformed/);
      const ok = state();
      assert.equal(applySegment(pages, ok, meta as SegmentMeta, body, limit, "s"), false);
      assert.deepEqual([ok.txid, ok.dbSize, ok.position, ok.bigEndian, ok.time], [5, 5, null, false, t0 + 5000]);
    } finally {
      fs.closeSync(fd);
    }
  }));
