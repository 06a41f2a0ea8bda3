/**
 * The parts of replicate that reuse memory instead of allocating every byte
 * afresh (docs/DECISIONS.md, "Replicate reuses its memory"), each held to
 * the bytes it must give:
 *
 * - ZstdPieceEncoder, native and its zstdCompressSync stand-in: every input
 *   (empty, tiny, compressible, incompressible and larger than the first
 *   output buffer) comes back exactly through both decoders; the native
 *   encoder's output lands in the same buffer call after call, so a caller
 *   that keeps a result must copy it;
 * - ZstdStreamEncoder: chunks pushed one at a time come back as one zstd
 *   frame (a snapshot's payload is one frame) holding exactly their
 *   concatenation, through both decoders, its output in two buffers only;
 * - a segment whose pieces are compressed one after another by that shared
 *   encoder holds every piece, not the last one many times over;
 * - a builder with a spill file keeps at most SPILL_AFTER of pieces in
 *   memory and the rest in the file, and gives the very object (bytes and
 *   hash) a builder without one gives, through build, rebuild, the cache's
 *   writer and the next segment; commit empties the file, close removes it;
 *   a spill file that cannot be written leaves the pieces in memory.
 *
 * Streamed S3 uploads are held to their bytes in replica_storage_test.ts.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { decompress as fzstdDecompress } from "fzstd";
import { decodeObject } from "../src/replica/object_format.ts";
import { decodeSegmentBody, streamSegmentBody } from "../src/replica/segment.ts";
import { ZstdChunkDecoder, ZstdPieceEncoder, zstdDecompress, ZstdStreamEncoder } from "../src/replica/zstd.ts";
import { PIECE_BYTES, SegmentBuilder, segmentBytes, SPILL_AFTER } from "../src/replicate/segment_builder.ts";
import type { ObservedTransaction } from "../src/capture/wal_follower.ts";
import { writeFileDurable } from "../src/durable.ts";
import { test } from "./_runtime.ts";
import { removeTempDirs, tempDir } from "./_util.ts";

const MiB = 1 << 20;

function textBytes(n: number, seed: number): Uint8Array {
  const words = ["alpha", "beta", "gamma", "order", "invoice", "paid", "street", String(seed)];
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n;) {
    x = (x * 1103515245 + 12345) >>> 0;
    for (const c of words[x % words.length] + " ") if (i < n) out[i++] = c.charCodeAt(0);
  }
  return out;
}

for (const native of [true, false]) {
  const name = native ? "native" : "zstdCompressSync";
  test(`piece encoder (${name}): every input comes back exact through both decoders`, () => {
    const encoder = new ZstdPieceEncoder({ native });
    const inputs = [
      new Uint8Array(0),
      new Uint8Array([42]),
      textBytes(4 * MiB, 1),
      // Incompressible and larger than the first 1 MiB output buffer: the output must grow.
      new Uint8Array(randomBytes(3 * MiB + 333)),
      textBytes(100_000, 2),
    ];
    for (const [i, input] of inputs.entries()) {
      const frame = encoder.compress(input).slice();
      assert.ok(Buffer.from(zstdDecompress(frame)).equals(input), `input ${i} through node:zlib`);
      assert.ok(Buffer.from(fzstdDecompress(frame)).equals(input), `input ${i} through fzstd`);
    }
    encoder.close();
  });
}

/** How many zstd frames `data` holds, walking frame and block headers (RFC 8878 §3.1.1). */
function zstdFrameCount(data: Uint8Array): number {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = 0;
  let frames = 0;
  while (at < data.length) {
    assert.equal(view.getUint32(at, true), 0xfd2fb528, `a zstd frame starts at byte ${at}`);
    const fhd = data[at + 4];
    const single = (fhd >> 5) & 1;
    const fcsBytes = [single ? 1 : 0, 2, 4, 8][fhd >> 6];
    at += 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3] + fcsBytes;
    for (let last = 0; !last;) {
      const header = data[at] | (data[at + 1] << 8) | (data[at + 2] << 16);
      last = header & 1;
      const type = (header >> 1) & 3;
      at += 3 + (type === 1 ? 1 : header >>> 3);
    }
    if ((fhd >> 2) & 1) at += 4;
    frames++;
  }
  assert.equal(at, data.length, "the frames end where the data ends");
  return frames;
}

test("stream encoder: chunks pushed in turn make one frame of exactly their bytes, in two reused buffers", () => {
  const encoder = new ZstdStreamEncoder({ chunkSize: 64 * 1024 });
  const inputs = [
    textBytes(3 * MiB, 5),
    new Uint8Array(0),
    new Uint8Array(randomBytes(MiB + 77)), // incompressible: many full output buffers in one push
    new Uint8Array([1, 2, 3]),
    textBytes(200_000, 6),
  ];
  const out: Uint8Array[] = [];
  const buffers = new Set<ArrayBufferLike>();
  const take = (views: Iterable<Uint8Array>) => {
    for (const view of views) {
      buffers.add(view.buffer);
      out.push(view.slice());
    }
  };
  for (const input of inputs) take(encoder.push(input));
  take(encoder.end());
  encoder.close();
  const frame = Buffer.concat(out);
  const expected = Buffer.concat(inputs);
  assert.ok(out.length > 16, `many output chunks (${out.length})`);
  assert.equal(buffers.size, 2, "every output chunk is a view of one of two buffers");
  assert.equal(zstdFrameCount(frame), 1);
  assert.ok(Buffer.from(zstdDecompress(frame)).equals(expected), "through node:zlib");
  assert.ok(Buffer.from(fzstdDecompress(frame)).equals(expected), "through fzstd");
});

test("stream encoder: a small input's output buffers are its size, not the 1 MiB default", () => {
  const input = textBytes(8192, 7);
  const encoder = new ZstdStreamEncoder({ inputSize: input.length });
  const kept: Uint8Array[] = [];
  for (const views of [encoder.push(input), encoder.end()]) {
    for (const view of views) {
      assert.equal(view.buffer.byteLength, 8192);
      kept.push(view.slice()); // as it comes: the encoder reuses its buffers
    }
  }
  encoder.close();
  assert.ok(kept.length > 0);
  const frame = Buffer.concat(kept);
  assert.equal(zstdFrameCount(frame), 1);
  assert.equal(frame[4] >> 6, 1, "the frame header records the pledged size (2-byte field)");
  assert.ok(Buffer.from(zstdDecompress(frame)).equals(input));
  assert.ok(Buffer.from(fzstdDecompress(frame)).equals(input));
});

test("stream encoder: input that is not the pledged size fails the frame instead of making one", () => {
  const encoder = new ZstdStreamEncoder({ inputSize: 10_000 });
  assert.throws(() => {
    for (const _ of encoder.push(textBytes(5_000, 8))) { /* drained */ }
    for (const _ of encoder.end()) { /* drained */ }
  });
  encoder.close();
});

test("piece encoder (native): results share one buffer, so the next call overwrites a kept view", () => {
  const encoder = new ZstdPieceEncoder();
  const first = encoder.compress(textBytes(MiB, 3));
  const copy = first.slice();
  const second = encoder.compress(textBytes(MiB, 4));
  assert.equal(first.buffer, second.buffer, "the same output buffer");
  assert.ok(!Buffer.from(first).equals(copy), "the first view now shows the second frame's bytes");
  assert.ok(Buffer.from(zstdDecompress(copy)).equals(textBytes(MiB, 3)), "the copy is still the first frame");
  encoder.close();
});

const PAGE = 4096;

/**
 * Transactions of 64 one-page frames, about `pieces` pieces of raw records
 * in all; pages half random (so the compressed pieces pass SPILL_AFTER) when
 * `random`.
 */
function transactions(pieces: number, random = false): ObservedTransaction[] {
  const perTx = 64;
  const txCount = Math.ceil((pieces * PIECE_BYTES) / (perTx * (24 + PAGE)));
  const out: ObservedTransaction[] = [];
  for (let t = 0; t < txCount; t++) {
    const frames = new Uint8Array(perTx * (24 + PAGE));
    const v = new DataView(frames.buffer);
    const pages: number[] = [];
    for (let i = 0; i < perTx; i++) {
      const at = i * (24 + PAGE);
      const pgno = t * perTx + i + 1;
      pages.push(pgno);
      v.setUint32(at, pgno);
      v.setUint32(at + 4, i === perTx - 1 ? (t + 1) * perTx : 0);
      v.setUint32(at + 8, 7);
      v.setUint32(at + 12, 9);
      frames.set(textBytes(PAGE, pgno), at + 24);
      if (random) frames.set(randomBytes(PAGE / 2), at + 24);
    }
    out.push({
      firstFrame: t * perTx + 1,
      lastFrame: (t + 1) * perTx,
      offset: 0,
      end: 0,
      pages,
      dbSize: (t + 1) * perTx,
      checksum1: t,
      checksum2: t,
      frames,
      time: 1_000 + t,
    });
  }
  return out;
}

/** Checks that `bytes` is a segment holding exactly `txs`, in order. */
function assertHolds(bytes: Uint8Array, txs: ObservedTransaction[]): void {
  const { meta, payload } = decodeObject(bytes, "segment");
  assert.equal(meta.kind, "segment");
  if (meta.kind !== "segment") return;
  let t = 0;
  const decoder = new ZstdChunkDecoder();
  for (const record of decodeSegmentBody(streamSegmentBody(meta, payload, "segment", decoder), PAGE, "segment")) {
    assert.equal(record.tag, "transaction");
    if (record.tag !== "transaction") continue;
    assert.ok(Buffer.from(record.frames).equals(txs[t].frames), `transaction ${t} exact`);
    t++;
  }
  decoder.close();
  assert.equal(t, txs.length, "every transaction");
}

test("segment builder: pieces compressed one after another by the shared encoder each keep their own bytes", () => {
  const builder = new SegmentBuilder(0, null, 0, false);
  const txs = transactions(2.5);
  builder.add(txs, null);
  const seg = builder.build("g", PAGE);
  assert.ok((seg.meta.pieces?.length ?? 1) >= 3, `several pieces (${seg.meta.pieces?.length})`);
  assertHolds(segmentBytes(seg), txs);
});

test("segment builder: pieces past SPILL_AFTER wait in the spill file, and the object is the same byte for byte", () => {
  const dir = tempDir("spill");
  const spillPath = path.join(dir, "segment-spill");
  const txs = transactions(6, true);
  const plain = new SegmentBuilder(0, null, 0, false);
  plain.add(txs, null);
  const expected = plain.build("g", PAGE);
  assert.ok(expected.parts.every((p) => p instanceof Uint8Array), "no spill file: every piece in memory");

  const spilling = new SegmentBuilder(0, null, 0, false, { spillPath });
  spilling.add(txs, null);
  const seg = spilling.build("g", PAGE);
  const runs = seg.parts.filter((p) => !(p instanceof Uint8Array));
  assert.ok(runs.length >= 2, `pieces went to the spill file (${runs.length})`);
  const held = seg.parts.slice(1, -1).filter((p) => p instanceof Uint8Array).reduce((n, p) => n + p.length, 0);
  assert.ok(held <= SPILL_AFTER, `at most SPILL_AFTER held in memory (${held})`);
  assert.equal(seg.hash, expected.hash);
  assert.equal(seg.size, expected.size);
  const bytes = segmentBytes(seg);
  assert.ok(Buffer.from(bytes).equals(segmentBytes(expected)), "the same object");
  assertHolds(bytes, txs);

  // Written through the cache's writer, runs and all: the same bytes on disk.
  writeFileDurable(path.join(dir, "object"), seg.parts);
  assert.ok(fs.readFileSync(path.join(dir, "object")).equals(bytes), "written object");
  // Built again before commit (a cache write that failed): still the same.
  assert.equal(spilling.build("g", PAGE).hash, expected.hash);

  // Commit empties the spill file; the next segment spills from its start.
  spilling.commit();
  assert.equal(fs.statSync(spillPath).size, 0);
  const more = transactions(6, true).map((tx) => ({ ...tx, firstFrame: tx.firstFrame + 10_000, lastFrame: tx.lastFrame + 10_000 }));
  spilling.add(more, null);
  const next = spilling.build("g", PAGE);
  assert.ok(next.parts.some((p) => !(p instanceof Uint8Array)), "the next segment spills too");
  assertHolds(segmentBytes(next), more);
  spilling.close();
  assert.ok(!fs.existsSync(spillPath), "close removes the spill file");
});

test("segment builder: a spill file that cannot be written leaves the pieces in memory, nothing lost", () => {
  const dir = tempDir("spill");
  // The spill file's directory does not exist: every spill fails.
  const spilling = new SegmentBuilder(0, null, 0, false, { spillPath: path.join(dir, "missing", "segment-spill") });
  const txs = transactions(6, true);
  spilling.add(txs, null);
  const seg = spilling.build("g", PAGE);
  assert.ok(seg.parts.every((p) => p instanceof Uint8Array), "every piece in memory");
  assertHolds(segmentBytes(seg), txs);
  spilling.close();
});

test("teardown: temporary directories are removed", () => {
  removeTempDirs();
});
