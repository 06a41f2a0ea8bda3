/**
 * The parts of a restore that reuse memory instead of allocating every byte
 * afresh (docs/DECISIONS.md, "Restore reuses its memory"), each held to the
 * bytes it must give:
 *
 * - ZstdChunkDecoder, native and fzstd's stand-in: several frames fed whole
 *   or in slices give exactly their contents; native chunks alternate
 *   between two buffers; bytes that are not zstd throw; after reset, a new
 *   frame decodes whatever the last one left unfinished;
 * - decodeSegmentBody over parts that reuse two buffers (as the decoder's
 *   chunks do): every record, consumed as it comes, is exact, though
 *   transactions span many parts, and a heal's pages stay right after
 *   later parts overwrite the buffers; a consumer that stops early closes
 *   the parts;
 * - LastVersions with room for three pages: the file ends with each page's
 *   last version, written through many flushes (some before the caller's
 *   own), and a page is copied in, so
 *   changing the caller's buffer afterwards changes nothing;
 * - verifiedPayload, an object cut into chunks of every size around the
 *   trailer's: exactly the payload; cut short or changed: CORRUPT;
 * - a snapshot or segment whose hash holds but whose payload is not zstd:
 *   CORRUPT, naming the object, nothing written.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { concatBytes } from "../src/bytes.ts";
import { WalshipError } from "../src/errors.ts";
import { decodeObject, encodeObject, HASH_SIZE, type SegmentMeta } from "../src/replica/object_format.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { decodeSegmentBody, encodeSegmentBody, type SegmentRecord } from "../src/replica/segment.ts";
import { ZstdChunkDecoder } from "../src/replica/zstd.ts";
import { LastVersions } from "../src/restore/apply.ts";
import { type StreamedObject, verifiedPayload } from "../src/restore/object_reader.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { pathToFileURL } from "node:url";
import { buildReplica } from "./_restore_fixtures.ts";
import { test } from "./_runtime.ts";
import { prng, withTempDir } from "./_util.ts";

const rand = prng(20261122);

function noise(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = i % 3 === 0 ? rand() & 0xff : i & 0x3f; // compressible, not trivially
  return out;
}

/** Copies every chunk a generator yields, at once (the chunks may be views into reused buffers). */
function drain(chunks: Iterable<Uint8Array>, seen: Uint8Array[] = []): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const c of chunks) {
    seen.push(c);
    out.push(c.slice());
  }
  return out;
}

for (const native of [true, false]) {
  const name = native ? "native" : "fzstd";
  test(`ZstdChunkDecoder (${name}): frames whole or sliced give their contents; bad bytes throw; reset starts afresh`, () => {
    const contents = [noise(300_000), noise(1), noise(70_000), noise(4096)];
    const frames = contents.map((c) => zlib.zstdCompressSync(c));
    const joined = concatBytes(frames);
    const want = Buffer.from(concatBytes(contents));
    const chunkSize = 64 << 10;

    // Whole.
    let decoder = new ZstdChunkDecoder(chunkSize, { native });
    const seen: Uint8Array[] = [];
    const whole = [...drain(decoder.push(joined), seen), ...drain(decoder.end(), seen)];
    decoder.close();
    assert.ok(Buffer.from(concatBytes(whole)).equals(want), "whole input");
    if (native) {
      assert.ok(seen.every((c) => c.length <= chunkSize), "no chunk is larger than the buffers");
      assert.ok(seen.length > 4, `${seen.length} chunks`);
      for (let i = 2; i < seen.length; i++) assert.equal(seen[i].buffer, seen[i - 2].buffer, `chunk ${i} reuses chunk ${i - 2}'s buffer`);
      assert.notEqual(seen[0].buffer, seen[1].buffer, "two buffers, in turn");
    }

    // In slices of every kind of size, one byte to many kilobytes.
    decoder = new ZstdChunkDecoder(chunkSize, { native });
    const sliced: Uint8Array[] = [];
    for (let at = 0; at < joined.length;) {
      const n = Math.min(joined.length - at, [1, 7, 100, 5000, 40_000][rand() % 5]);
      sliced.push(...drain(decoder.push(joined.subarray(at, at + n))));
      at += n;
    }
    sliced.push(...drain(decoder.end()));
    decoder.close();
    assert.ok(Buffer.from(concatBytes(sliced)).equals(want), "sliced input");

    // Not zstd at all.
    decoder = new ZstdChunkDecoder(chunkSize, { native });
    assert.throws(() => drain(decoder.push(noise(1000))), Error);
    decoder.close();

    // A frame cut short, then reset: the next frame decodes as if alone.
    decoder = new ZstdChunkDecoder(chunkSize, { native });
    drain(decoder.push(frames[2].subarray(0, frames[2].length - 9)));
    decoder.reset();
    const after = [...drain(decoder.push(frames[3])), ...drain(decoder.end())];
    decoder.close();
    assert.ok(Buffer.from(concatBytes(after)).equals(Buffer.from(contents[3])), "after reset");
  });
}

test("decodeSegmentBody over parts in two reused buffers: each record exact as it comes; heal pages survive later parts", () => {
  const PAGE = 512;
  const frameSize = 24 + PAGE;
  const records: SegmentRecord[] = [{ tag: "header", header: noise(32) }];
  for (let i = 0; i < 40; i++) {
    if (i % 13 === 6) {
      records.push({
        tag: "heal",
        dbSize: 9 + i,
        time: 1763731234567 + i,
        position: { salt1: i, salt2: 2, frame: 3 + i, checksum1: 4, checksum2: 5 },
        bigEndian: i % 2 === 0,
        pages: [3, 1, 8].map((pgno) => ({ pgno, page: noise(PAGE) })),
      });
    } else {
      const frameCount = 1 + (rand() % 6);
      records.push({ tag: "transaction", firstFrame: 1 + i * 10, frameCount, time: 1763731234000 + i / 4, frames: noise(frameCount * frameSize) });
    }
  }
  const body = encodeSegmentBody(records);

  for (const partSize of [97, 700, 4096]) {
    // Parts written into two buffers in turn, as ZstdChunkDecoder's chunks are.
    const buffers = [new Uint8Array(partSize), new Uint8Array(partSize)];
    const parts = function* () {
      for (let at = 0, k = 0; at < body.length; at += partSize, k ^= 1) {
        const n = Math.min(partSize, body.length - at);
        buffers[k].set(body.subarray(at, at + n));
        yield buffers[k].subarray(0, n);
      }
    };
    const got: SegmentRecord[] = [];
    const heals: SegmentRecord[] = [];
    for (const rec of decodeSegmentBody(parts(), PAGE, "body")) {
      // Consumed as it comes: a copy, taken before the next record is asked for.
      got.push(structuredClone(rec));
      if (rec.tag === "heal") heals.push(rec); // kept as given: its pages must be its own
    }
    assert.deepStrictEqual(got, records, `parts of ${partSize} bytes`);
    const want = records.filter((r) => r.tag === "heal");
    assert.deepStrictEqual(heals, want, `heal pages after later parts, parts of ${partSize} bytes`);
  }

  // A consumer that stops after the first record closes the parts (their finally runs: a decoder they own is freed).
  let closed = false;
  const parts = function* () {
    try {
      for (let at = 0; at < body.length; at += 1000) yield body.subarray(at, at + 1000);
    } finally {
      closed = true;
    }
  };
  for (const _ of decodeSegmentBody(parts(), PAGE, "body")) break;
  assert.ok(closed, "the parts were closed");
});

test("LastVersions with room for three pages: each page's last version lands, through many flushes; pages are copied in", () =>
  withTempDir("last-versions", (dir) => {
    const PAGE = 512;
    const file = path.join(dir, "out.db");
    const fd = fs.openSync(file, "w+");
    try {
      const pages = new LastVersions(fd, PAGE, 3 * PAGE);
      const last = new Map<number, Uint8Array>();
      const scratch = new Uint8Array(PAGE); // one buffer, rewritten for every set: only copies keep the versions
      for (let i = 0; i < 400; i++) {
        const pgno = 1 + (rand() % 12);
        scratch.set(noise(PAGE));
        pages.set(pgno, scratch);
        last.set(pgno, scratch.slice());
      }
      scratch.fill(0xee);
      assert.ok(fs.fstatSync(fd).size > 0, "pages were written before the last flush: three slots cannot hold twelve pages");
      pages.flush();
      const image = fs.readFileSync(file);
      for (const [pgno, page] of last) {
        assert.ok(image.subarray((pgno - 1) * PAGE, pgno * PAGE).equals(page), `page ${pgno}`);
      }
      assert.equal(image.length, Math.max(...last.keys()) * PAGE);
    } finally {
      fs.closeSync(fd);
    }
  }));

test("verifiedPayload: an object in chunks of every size around the trailer's gives exactly its payload; cut or changed, CORRUPT", async () => {
  const payload = noise(5000);
  const meta: SegmentMeta = {
    kind: "segment",
    generation: "g",
    pageSize: 512,
    firstTxid: 2,
    lastTxid: 2,
    firstTime: 1,
    lastTime: 1,
    start: null,
    end: null,
    bigEndian: false,
    dbSize: 1,
    bodySize: 1,
  };
  const bytes = encodeObject(meta, payload).bytes;
  const read = async (chunks: Uint8Array[]) => {
    const out: StreamedObject = { meta: null };
    const got: Uint8Array[] = [];
    for await (const c of verifiedPayload((async function* () {
      yield* chunks;
    })(), "obj", out)) got.push(c.slice());
    return { body: concatBytes(got), meta: out.meta };
  };
  const cut = (b: Uint8Array, size: () => number) => {
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < b.length;) {
      const n = Math.min(b.length - at, size());
      chunks.push(b.slice(at, at + n));
      at += n;
    }
    return chunks;
  };
  for (const size of [1, 5, HASH_SIZE - 1, HASH_SIZE, HASH_SIZE + 1, 100, 4999, bytes.length]) {
    const { body, meta: m } = await read(cut(bytes, () => size));
    assert.ok(Buffer.from(body).equals(payload), `chunks of ${size}`);
    assert.deepEqual(m, { ...meta, format: 1 });
  }
  for (let k = 0; k < 30; k++) {
    const { body } = await read(cut(bytes, () => 1 + (rand() % 70)));
    assert.ok(Buffer.from(body).equals(payload), "random chunks");
  }
  const corrupt = (re: RegExp) => (err: unknown) => err instanceof WalshipError && err.code === "CORRUPT" && re.test(err.message);
  for (const drop of [1, HASH_SIZE - 1, HASH_SIZE, HASH_SIZE + 1, 3000]) {
    await assert.rejects(read(cut(bytes.subarray(0, bytes.length - drop), () => 33)), corrupt(/^obj (is truncated|failed its hash check)/), `cut by ${drop}`);
  }
  for (const at of [bytes.length - 1, bytes.length - HASH_SIZE - 1, bytes.length - 2000]) {
    const changed = bytes.slice();
    changed[at] ^= 1;
    await assert.rejects(read(cut(changed, () => 64)), corrupt(/^obj failed its hash check/), `byte ${at} changed`);
  }
});

test("a snapshot or a segment whose hash holds but whose payload is not zstd: CORRUPT, naming it, nothing written", () =>
  withTempDir("not-zstd", async (dir) => {
    for (const which of ["snapshot", "segment"] as const) {
      const storage = openReplica(pathToFileURL(path.join(dir, `replica-${which}`)).href);
      fs.mkdirSync(path.join(dir, which));
      const built = await buildReplica(path.join(dir, which), storage, 2);
      const key = which === "snapshot" ? built.snapshotKey : built.segments.get(2)!;
      const { meta } = decodeObject(await storage.get(key), key);
      if (meta.kind === "segment") delete meta.pieces;
      await storage.put(key, encodeObject(meta, noise(3000)).bytes); // a valid object around bytes that are not zstd
      const out = path.join(dir, `out-${which}.db`);
      await assert.rejects(
        restoreDatabase({ storage, output: out }),
        (err: unknown) =>
          err instanceof WalshipError && err.code === "CORRUPT" &&
          err.message.includes(key) && /does not decompress/.test(err.message),
      );
      assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith(`out-${which}`)), [], "nothing written");
    }
  }));
