/**
 * walChecksum against what SQLite wrote: the WAL header checksum and every
 * frame's running checksum, in WALs from two different writers; unaligned
 * input gives what aligned input gives; both byte orders agree with the
 * word-by-word reference.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { walChecksum } from "../src/sqlite/checksum.ts";
import { test } from "./_runtime.ts";
import {
  DB_NAME,
  FRAME_HEADER,
  frameAt,
  randomBytes,
  readDbFiles,
  referenceChecksum,
  runSession,
  standardSteps,
  u32be,
  WAL_HEADER,
  type Writer,
} from "./_wal_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

/** The chain over a whole WAL with walChecksum: [header checksum, frame 1, frame 2, ...]. */
function chain(wal: Uint8Array, pageSize: number, bigEndian: boolean): [number, number][] {
  const out: [number, number][] = [];
  const state = new Uint32Array(2);
  walChecksum(state, wal, 0, 24, bigEndian);
  out.push([state[0], state[1]]);
  for (let k = 1; frameAt(k + 1, pageSize) <= wal.length; k++) {
    const off = frameAt(k, pageSize);
    walChecksum(state, wal, off, 8, bigEndian);
    walChecksum(state, wal, off + FRAME_HEADER, pageSize, bigEndian);
    out.push([state[0], state[1]]);
  }
  return out;
}

/** What SQLite stored: the header's checksum, then each frame's. */
function stored(wal: Uint8Array, pageSize: number): [number, number][] {
  const out: [number, number][] = [[u32be(wal, 24), u32be(wal, 28)]];
  for (let k = 1; frameAt(k + 1, pageSize) <= wal.length; k++) {
    const off = frameAt(k, pageSize);
    out.push([u32be(wal, off + 16), u32be(wal, off + 20)]);
  }
  return out;
}

/** `bytes` copied so that it starts `shift` bytes past a 4-byte boundary. */
function misaligned(bytes: Uint8Array, shift: number): Uint8Array {
  const buffer = new Uint8Array(bytes.length + 8);
  const out = buffer.subarray(shift, shift + bytes.length);
  out.set(bytes);
  return out;
}

const writers: { writer: Writer; pageSize: number }[] = [
  { writer: "python", pageSize: 4096 },
  { writer: "cli", pageSize: 1024 },
  { writer: "runtime", pageSize: 65536 },
];

for (const { writer, pageSize } of writers) {
  test(`checksum: header and every frame's chain equal what SQLite (${writer}) wrote, page ${pageSize}`, async () => {
    await withTempDir("checksum", async (dir) => {
      const copy = path.join(dir, "copy");
      await runSession(writer, path.join(dir, "live", DB_NAME), {
        pageSize,
        steps: [...standardSteps(7, 5, 6, 200, pageSize * 2), { copy }],
      });
      const { wal } = readDbFiles(copy);
      assert.equal(u32be(wal, 0), 0x377f0682, "x86 writers use little-endian checksums");
      const frames = (wal.length - WAL_HEADER) / (FRAME_HEADER + pageSize);
      assert.ok(Number.isInteger(frames) && frames >= 12, `${frames} frames`);

      const expected = stored(wal, pageSize);
      assert.equal(expected.length, frames + 1);
      assert.deepEqual(chain(wal, pageSize, false), expected);
      for (const shift of [1, 2, 3, 5]) {
        assert.deepEqual(
          chain(misaligned(wal, shift), pageSize, false),
          expected,
          `misaligned by ${shift}`,
        );
      }
      // The other byte order over the same bytes gives another chain.
      assert.notDeepEqual(chain(wal, pageSize, true)[0], expected[0]);
    });
  });
}

test("checksum: agrees with the word-by-word reference in both byte orders, any alignment and length", () => {
  const rand = prng(42);
  const data = randomBytes(rand, 300_000);
  for (let i = 0; i < 300; i++) {
    const bigEndian = (rand() & 1) === 1;
    // Lengths up to 256 KiB cross the unaligned path's scratch-buffer growth.
    const length = 8 * (rand() % (i % 10 === 0 ? 32768 : 600));
    const offset = rand() % (data.length - length);
    const start: [number, number] = [rand(), rand()];
    const state = new Uint32Array(start);
    walChecksum(state, data, offset, length, bigEndian);
    const want = referenceChecksum(start, data, offset, length, bigEndian);
    assert.deepEqual(
      [state[0], state[1]],
      want,
      `offset ${offset} length ${length} bigEndian ${bigEndian}`,
    );
  }
});

test("checksum: a short unaligned input after a long one uses only its own bytes", () => {
  const rand = prng(9);
  const big = misaligned(randomBytes(rand, 70_000), 3);
  const small = misaligned(randomBytes(rand, 64), 1);
  const s = new Uint32Array(2);
  walChecksum(s, big, 0, 69_992, false);
  for (const bigEndian of [false, true]) {
    const state = new Uint32Array(2);
    walChecksum(state, small, 0, 64, bigEndian);
    assert.deepEqual([state[0], state[1]], referenceChecksum([0, 0], small, 0, 64, bigEndian));
  }
});

test("checksum: a length that is not a multiple of 8 is refused", () => {
  const state = new Uint32Array(2);
  assert.throws(() => walChecksum(state, new Uint8Array(16), 0, 12, false), {
    name: "RangeError",
    message: "checksum length 12 is not a multiple of 8",
  });
  assert.deepEqual([...state], [0, 0]);
});

test("checksum: one flipped bit anywhere in a page changes the result", () => {
  const rand = prng(5);
  const page = randomBytes(rand, 4096);
  const original = page.slice();
  const base = referenceChecksum([0, 0], page, 0, 4096, false);
  for (let i = 0; i < 200; i++) {
    const at = rand() % 4096;
    page[at] ^= 1 << (rand() % 8);
    const state = new Uint32Array(2);
    walChecksum(state, page, 0, 4096, false);
    assert.notDeepEqual([state[0], state[1]], base, `bit flipped in byte ${at}`);
    page[at] = original[at];
  }
});
