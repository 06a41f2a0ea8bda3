/**
 * SQLite's WAL checksum (wal.c, walChecksumBytes): over 32-bit words taken two
 * at a time, `s0 += x[i] + s1; s1 += x[i+1] + s0`, all mod 2^32. The words are
 * read big-endian when the WAL magic is 0x377f0683 and little-endian when it is
 * 0x377f0682. The loop runs on a 32-bit typed view of the bytes; only when the
 * wanted order differs from the host's does each word get its bytes swapped.
 *
 * @module
 */

const hostLittleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
let scratch = new Int32Array(1024);

/**
 * Continues the checksum in `state` (two u32s: s0, s1) over `length` bytes of
 * `data` starting at `offset`. `length` must be a multiple of 8.
 *
 * @example
 * ```ts
 * const state = new Uint32Array(2); // starts at 0, 0
 * walChecksum(state, walHeaderBytes, 0, 24, false);
 * // state[0], state[1] now equal the header's checksum-1 and checksum-2
 * ```
 */
export function walChecksum(
  state: Uint32Array,
  data: Uint8Array,
  offset: number,
  length: number,
  bigEndian: boolean,
): void {
  if (length % 8 !== 0) throw new RangeError(`checksum length ${length} is not a multiple of 8`);
  const n = length >>> 2;
  const start = data.byteOffset + offset;
  let words: Int32Array;
  if (start % 4 === 0) {
    words = new Int32Array(data.buffer, start, n);
  } else {
    // Unaligned input: copy once into a reused aligned buffer.
    if (scratch.length < n) scratch = new Int32Array(n);
    new Uint8Array(scratch.buffer, 0, length).set(data.subarray(offset, offset + length));
    words = scratch;
  }
  let s0 = state[0] | 0;
  let s1 = state[1] | 0;
  if (bigEndian === !hostLittleEndian) {
    for (let i = 0; i < n; i += 2) {
      s0 = (s0 + words[i] + s1) | 0;
      s1 = (s1 + words[i + 1] + s0) | 0;
    }
  } else {
    for (let i = 0; i < n; i += 2) {
      const a = words[i];
      const b = words[i + 1];
      s0 = (s0 + ((a << 24) | ((a & 0xff00) << 8) | ((a >>> 8) & 0xff00) | (a >>> 24)) + s1) | 0;
      s1 = (s1 + ((b << 24) | ((b & 0xff00) << 8) | ((b >>> 8) & 0xff00) | (b >>> 24)) + s0) | 0;
    }
  }
  state[0] = s0;
  state[1] = s1;
}

/** True when the host stores u32s little-endian (x86, ARM): SQLite's "native" order for -shm. */
export const isHostLittleEndian = hostLittleEndian;
