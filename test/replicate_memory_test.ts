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
 * - a segment whose pieces are compressed one after another by that shared
 *   encoder holds every piece, not the last one many times over.
 *
 * Streamed S3 uploads are held to their bytes in replica_storage_test.ts.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { decompress as fzstdDecompress } from "fzstd";
import { decodeObject } from "../src/replica/object_format.ts";
import { decodeSegmentBody, decompressSegmentParts } from "../src/replica/segment.ts";
import { ZstdPieceEncoder, zstdDecompress } from "../src/replica/zstd.ts";
import { PIECE_BYTES, SegmentBuilder } from "../src/replicate/segment_builder.ts";
import { test } from "./_runtime.ts";

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

test("segment builder: pieces compressed one after another by the shared encoder each keep their own bytes", () => {
  const pageSize = 4096;
  const builder = new SegmentBuilder(0, null, 0, false);
  // Transactions of 64 one-page frames: about 2.5 pieces of raw records in all.
  const transactions = [];
  let frame = 0;
  const salts = [7, 9];
  const perTx = 64;
  const txCount = Math.ceil((2.5 * PIECE_BYTES) / (perTx * (24 + pageSize)));
  for (let t = 0; t < txCount; t++) {
    const frames = new Uint8Array(perTx * (24 + pageSize));
    const v = new DataView(frames.buffer);
    const pages: number[] = [];
    for (let i = 0; i < perTx; i++) {
      const at = i * (24 + pageSize);
      const pgno = t * perTx + i + 1;
      pages.push(pgno);
      v.setUint32(at, pgno);
      v.setUint32(at + 4, i === perTx - 1 ? (t + 1) * perTx : 0);
      v.setUint32(at + 8, salts[0]);
      v.setUint32(at + 12, salts[1]);
      frames.set(textBytes(pageSize, pgno), at + 24);
    }
    frame += perTx;
    transactions.push({
      firstFrame: frame - perTx + 1,
      lastFrame: frame,
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
  builder.add(transactions, null);
  const seg = builder.build("g", pageSize);
  assert.ok((seg.meta.pieces?.length ?? 1) >= 3, `several pieces (${seg.meta.pieces?.length})`);
  const { meta, payload } = decodeObject(Buffer.concat(seg.parts), "segment");
  assert.equal(meta.kind, "segment");
  let t = 0;
  for (const record of decodeSegmentBody(decompressSegmentParts(seg.meta, payload, "segment"), pageSize, "segment")) {
    assert.equal(record.tag, "transaction");
    if (record.tag !== "transaction") continue;
    assert.ok(Buffer.from(record.frames).equals(transactions[t].frames), `transaction ${t} exact`);
    t++;
  }
  assert.equal(t, transactions.length, "every transaction");
});
