/**
 * zstd for replica objects. Deno and Bun both carry zstd in `node:zlib`;
 * where a runtime lacks it (Node 20), `fzstd` decodes, so a replica stays
 * readable everywhere.
 *
 * @module
 */

import zlib from "node:zlib";
import { Decompress as FzstdDecompress, decompress as fzstdDecompress } from "fzstd";

/** zstd level for segments and snapshots: fast, and most of the win on SQLite pages. */
export const ZSTD_LEVEL = 3;
const hasNativeZstd = typeof zlib.zstdCompressSync === "function";

/** Compresses `data` with zstd into a fresh buffer. */
export function zstdCompress(data: Uint8Array): Uint8Array {
  if (!hasNativeZstd) throw new Error("this runtime has no zstd encoder in node:zlib: use Deno or Bun");
  return zlib.zstdCompressSync(data, {
    params: { [zlib.constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL },
  });
}

/** A `node:zlib` zstd stream, its handle, and the state array the handle's `writeSync` reports into. */
interface NativeZstd {
  stream: zlib.ZstdCompress | zlib.ZstdDecompress;
  handle: ZstdHandle;
  state: Uint32Array;
}

/**
 * The handle inside `stream`, with `onError` taking its errors (Bun reports
 * them there; Deno throws). Null, and the stream closed, where the runtime
 * lacks it.
 */
function nativeZstd(stream: NativeZstd["stream"], onError: (message: string) => void): NativeZstd | null {
  const inner = stream as unknown as { _handle?: ZstdHandle; _writeState?: Uint32Array };
  if (typeof inner._handle?.writeSync !== "function" || !(inner._writeState instanceof Uint32Array)) {
    stream.close();
    return null;
  }
  inner._handle.onerror = onError;
  return { stream, handle: inner._handle, state: inner._writeState };
}

/** The encoder's first output buffer; it doubles when a frame needs more. */
const FIRST_OUTPUT = 1 << 20;
/** An output buffer larger than this is not kept between calls (a large heal's). */
const KEEP_OUTPUT_MAX = 16 << 20;

/**
 * A zstd encoder whose output lands in one buffer it reuses: each
 * {@linkcode compress} returns a view that the next call overwrites. Like
 * {@linkcode ZstdChunkDecoder}, it drives the handle inside
 * `zlib.createZstdCompress()` directly; `zstdCompressSync` allocates every
 * output afresh, and a burst of pieces left tens of MB of them for the
 * collector (docs/DECISIONS.md, "Replicate reuses its memory"). Where the
 * handle is missing (or with `native: false`), `zstdCompressSync` stands in.
 * Whether a frame records its content size is the runtime's zstd's choice
 * (Bun's does, Deno's does not); no reader depends on it.
 */
export class ZstdPieceEncoder {
  readonly #native: NativeZstd | null = null;
  #out = new Uint8Array(0);
  #failure: string | null = null;

  constructor(options: { native?: boolean } = {}) {
    if (!hasNativeZstd) throw new Error("this runtime has no zstd encoder in node:zlib: use Deno or Bun");
    if (options.native === false) return;
    const stream = zlib.createZstdCompress({ params: { [zlib.constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL } });
    this.#native = nativeZstd(stream, (message) => this.#failure = message);
  }

  /** `data` as one whole zstd frame: a view valid until the next call. */
  compress(data: Uint8Array): Uint8Array {
    if (!this.#native) return zstdCompress(data);
    const { handle, state } = this.#native;
    if (this.#out.length === 0) this.#out = new Uint8Array(FIRST_OUTPUT);
    let out = this.#out;
    let produced = 0;
    let offset = 0;
    let left = data.length;
    handle.reset();
    for (;;) {
      handle.writeSync(zlib.constants.ZSTD_e_end, data, offset, left, out, produced, out.length - produced);
      if (this.#failure !== null) {
        const message = this.#failure;
        this.#failure = null;
        throw new Error(message);
      }
      const wrote = out.length - produced - state[0];
      offset += left - state[1];
      left = state[1];
      produced += wrote;
      // The frame is done once the input is used up and the encoder had room to spare.
      if (left === 0 && produced < out.length) break;
      const bigger = new Uint8Array(out.length * 2);
      bigger.set(out.subarray(0, produced));
      out = bigger;
    }
    this.#out = out.length > KEEP_OUTPUT_MAX ? new Uint8Array(0) : out;
    return out.subarray(0, produced);
  }

  /** Frees the encoder. */
  close(): void {
    this.#native?.stream.close();
  }
}

/** Decompresses a whole zstd frame (native when present, fzstd otherwise). */
export function zstdDecompress(data: Uint8Array): Uint8Array {
  return hasNativeZstd ? zlib.zstdDecompressSync(data) : fzstdDecompress(data);
}

/**
 * The part of node:zlib's zstd handle that {@linkcode ZstdPieceEncoder},
 * {@linkcode ZstdStreamEncoder} and {@linkcode ZstdChunkDecoder} drive.
 */
interface ZstdHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    out: Uint8Array,
    outOffset: number,
    outLength: number,
  ): void;
  reset(): void;
  onerror: (message: string, errno: number, code?: string) => void;
}

/** Two output buffers of `size` bytes used in turn (each made when first needed), and which one is next. */
interface TwoBuffers {
  size: number;
  buffers: Uint8Array[];
  next: number;
}

/**
 * Runs `input` through a native handle with `flush`, into `out`'s buffers
 * in turn, yielding each one's filled part as a view (valid while the next
 * one is filled, overwritten by the one after). Returns once the input is
 * used up and the handle had output room to spare: with `ZSTD_e_end` the
 * frame is then complete, with `ZSTD_e_continue` the handle holds the rest.
 * Throws what `failure()` reports after a call, and on a call that moves
 * nothing.
 */
function* drive(
  z: NativeZstd,
  flush: number,
  input: Uint8Array,
  out: TwoBuffers,
  failure: () => string | null,
): Generator<Uint8Array> {
  const { handle, state } = z;
  let offset = 0;
  let left = input.length;
  for (;;) {
    const buffer = out.buffers[out.next] ??= new Uint8Array(out.size);
    handle.writeSync(flush, input, offset, left, buffer, 0, buffer.length);
    const failed = failure();
    if (failed !== null) throw new Error(failed);
    const produced = buffer.length - state[0];
    const consumed = left - state[1];
    offset += consumed;
    left -= consumed;
    if (produced > 0) {
      out.next ^= 1;
      yield buffer.subarray(0, produced);
    }
    if (left === 0 && produced < buffer.length) return;
    if (produced === 0 && consumed === 0) throw new Error("the zstd handle made no progress");
  }
}

/**
 * Output chunk size of {@linkcode ZstdStreamEncoder} and, unless told,
 * {@linkcode ZstdChunkDecoder}: 1 MiB, not zlib's 16 KiB. Each output chunk
 * costs a write (or a copy) and a hash update; a 1 GiB object made 77,000
 * of each with 16 KiB.
 */
const STREAM_CHUNK = 1 << 20;

/**
 * One zstd frame made from input pushed a chunk at a time, its output
 * landing in two buffers it reuses (1 MiB each, `chunkSize`, or less for a
 * small input): what a snapshot of any size is compressed with. Each
 * output chunk is a view valid while the next one is taken (a caller that
 * keeps one must copy it). The frame is made on the calling thread by the handle
 * inside `zlib.createZstdCompress()`, as {@linkcode ZstdPieceEncoder} makes
 * pieces; the Transform stream it replaced allocated every output chunk
 * afresh and left a 1 GiB snapshot's worth of them to the collector
 * (docs/DECISIONS.md, "Replicate reuses its memory"). There is no stand-in:
 * without that handle (Deno and Bun both carry it) the constructor throws.
 */
export class ZstdStreamEncoder {
  readonly #native: NativeZstd;
  readonly #buffers: TwoBuffers;
  #failure: string | null = null;

  /**
   * `inputSize`, when known, must be exactly the bytes that will be pushed:
   * it is pledged to zstd, which then sizes its tables and window for it
   * and records it in the frame (ending the frame after other than that
   * many bytes fails), and it keeps the buffers no larger than the input
   * needs. Without it, a context costs about 0.8 MiB whatever the input, and
   * hundreds of small databases each take a snapshot at start.
   */
  constructor(options: { chunkSize?: number; inputSize?: number } = {}) {
    const native = hasNativeZstd
      ? nativeZstd(
        zlib.createZstdCompress({
          params: { [zlib.constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL },
          ...(options.inputSize === undefined ? {} : { pledgedSrcSize: options.inputSize }),
        } as zlib.ZstdOptions),
        (message) => this.#failure = message,
      )
      : null;
    if (!native) throw new Error("this runtime has no zstd encoder handle in node:zlib: use Deno or Bun");
    this.#native = native;
    const size = Math.min(options.chunkSize ?? STREAM_CHUNK, Math.max(4096, options.inputSize ?? Infinity));
    this.#buffers = { size, buffers: [], next: 0 };
  }

  /** Compresses `input` into the frame, yielding whatever output is ready. */
  push(input: Uint8Array): Generator<Uint8Array> {
    return drive(this.#native, zlib.constants.ZSTD_e_continue, input, this.#buffers, () => this.#failure);
  }

  /** Ends the frame, yielding the rest of it. */
  end(): Generator<Uint8Array> {
    return drive(this.#native, zlib.constants.ZSTD_e_end, new Uint8Array(0), this.#buffers, () => this.#failure);
  }

  /** Frees the encoder. */
  close(): void {
    this.#native.stream.close();
  }
}

/**
 * A zstd decoder fed input as it comes (one frame, or several one after
 * another: their contents follow each other), whose output lands in two
 * buffers of `chunkSize` bytes (1 MiB unless told) it reuses. Each chunk of output is yielded
 * as a view that stays valid while the next one is taken, and is
 * overwritten by the one after. A restore then touches the same few
 * megabytes instead of allocating every decompressed byte afresh: on the
 * machines measured, the kernel zeroing those new pages cost more than
 * decompressing them (docs/DECISIONS.md, "Restore reuses its memory").
 *
 * It drives the decoder behind `zlib.createZstdDecompress()` directly
 * (`_handle.writeSync`, which Deno and Bun both carry, as Node does): the
 * public stream and sync calls allocate every output buffer. Deno reports a
 * decoding error by throwing, Bun through the handle's `onerror`; both end
 * here as a thrown Error. Where that handle is missing (or with
 * `native: false`), fzstd's streaming decoder stands in: fresh buffers,
 * the same bytes.
 */
export class ZstdChunkDecoder {
  readonly #native: NativeZstd | null = null;
  readonly #buffers: TwoBuffers = { size: 0, buffers: [], next: 0 };
  #failure: string | null = null;
  #fallback: FzstdDecompress | null = null;
  #fallbackOut: Uint8Array[] = [];

  constructor(chunkSize = STREAM_CHUNK, options: { native?: boolean } = {}) {
    if (hasNativeZstd && options.native !== false) {
      this.#native = nativeZstd(zlib.createZstdDecompress(), (message) => this.#failure = message);
      if (this.#native) {
        this.#buffers.size = chunkSize;
        return;
      }
    }
    this.#fallback = this.#newFallback();
  }

  #newFallback(): FzstdDecompress {
    return new FzstdDecompress((data) => {
      if (data.length > 0) this.#fallbackOut.push(data);
    });
  }

  /** Decodes `input`, yielding the output it completes; throws on bytes that are not zstd. */
  *push(input: Uint8Array): Generator<Uint8Array> {
    if (this.#fallback) {
      this.#fallback.push(input);
      const out = this.#fallbackOut;
      this.#fallbackOut = [];
      yield* out;
      return;
    }
    yield* drive(this.#native!, zlib.constants.ZSTD_e_end, input, this.#buffers, () => this.#failure);
  }

  /** Yields what the input so far still holds back (fzstd may keep a block until told the input ended). */
  *end(): Generator<Uint8Array> {
    if (!this.#fallback) return;
    this.#fallback.push(new Uint8Array(0), true);
    const out = this.#fallbackOut;
    this.#fallbackOut = [];
    yield* out;
  }

  /** Forgets any frame left unfinished: the next input must start a new one. */
  reset(): void {
    if (this.#fallback) {
      this.#fallback = this.#newFallback();
      this.#fallbackOut = [];
    } else {
      this.#native!.handle.reset();
    }
  }

  /** Frees the decoder. */
  close(): void {
    this.#native?.stream.close();
  }
}

/**
 * The items of `chunks`, with whatever producing them throws replaced by
 * `wrap(err)` (a decoder's error as the caller's one-line CORRUPT); what
 * the consumer's own loop throws is not touched.
 */
export function* rethrowAs<T>(chunks: Iterable<T>, wrap: (err: unknown) => Error): Generator<T> {
  try {
    yield* chunks;
  } catch (err) {
    throw wrap(err);
  }
}
