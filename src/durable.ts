/**
 * Writing files so they survive a crash: write a temporary file beside the
 * target, fsync it, rename it into place, fsync the directory. A reader then
 * sees the old file or the whole new one, never a part.
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { ioError } from "./capture/file_source.ts";

/** fsyncs a directory, so a rename or create inside it is durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** A temporary name beside `target`, unique to this call. */
export function tempPathBeside(target: string): string {
  return `${target}.tmp-${randomBytes(6).toString("hex")}`;
}

/** `length` bytes at `offset` of the open file `fd`: part of a file's contents, standing in for bytes. */
export interface FileRun {
  fd: number;
  offset: number;
  length: number;
}

/** A buffer runs are read through, one call at a time (all of this is synchronous). */
let runBuffer: Uint8Array | null = null;
const RUN_CHUNK = 1 << 20;

/**
 * Calls `use` with the bytes of `run`, a chunk at a time, each a view into
 * one reused buffer that is valid only during the call. A file that ends
 * early is an error.
 */
export function forEachRunChunk(run: FileRun, use: (chunk: Uint8Array) => void): void {
  runBuffer ??= new Uint8Array(RUN_CHUNK);
  const buf = runBuffer;
  for (let done = 0; done < run.length;) {
    const want = Math.min(buf.length, run.length - done);
    const got = fs.readSync(run.fd, buf, 0, want, run.offset + done);
    if (got === 0) throw new Error(`file ends ${run.length - done} bytes short of its run`);
    use(buf.subarray(0, got));
    done += got;
  }
}

/** Writes `data` to `target` durably and atomically (temp, fsync, rename, fsync dir). */
export function writeFileDurable(target: string, data: Uint8Array | Array<Uint8Array | FileRun>): void {
  const tmp = tempPathBeside(target);
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      const write = (part: Uint8Array) => {
        let done = 0;
        while (done < part.length) done += fs.writeSync(fd, part, done, part.length - done);
      };
      for (const part of Array.isArray(data) ? data : [data]) {
        if (part instanceof Uint8Array) write(part);
        else forEachRunChunk(part, write);
      }
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, target);
    fsyncDir(path.dirname(target));
  } catch (err) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch { /* the original error matters more */ }
    throw ioError(`cannot write ${target}`, err);
  }
}

/** Moves an already-fsynced file into place durably. */
export function renameDurable(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
    fsyncDir(path.dirname(to));
  } catch (err) {
    throw ioError(`cannot move ${from} to ${to}`, err);
  }
}

/**
 * Lets the kernel write a large file back while more of it is written: an
 * fdatasync on the thread pool once every `every` bytes (one at a time, not
 * waited for), so the fsync that must end the file finds little left to do.
 * A failed sync is kept and thrown by {@linkcode settle}: the kernel reports
 * a write-back error once, so the final fsync might not see it again.
 */
export class EarlyWriteback {
  readonly #fd: number;
  readonly #every: number;
  #since = 0;
  #inFlight: Promise<void> | null = null;
  #error: Error | null = null;
  #syncs = 0;

  constructor(fd: number, every = 128 << 20) {
    this.#fd = fd;
    this.#every = every;
  }

  /** Counts `n` bytes written; starts a sync when enough are and none is in flight. */
  wrote(n: number): void {
    this.#since += n;
    if (this.#since < this.#every || this.#inFlight) return;
    this.#since = 0;
    this.#syncs++;
    this.#inFlight = new Promise((resolve) =>
      fs.fdatasync(this.#fd, (err) => {
        if (err) this.#error ??= err;
        this.#inFlight = null;
        resolve();
      })
    );
  }

  /** Syncs started so far. */
  get syncs(): number {
    return this.#syncs;
  }

  /** Waits for the sync in flight (before the descriptor is synced or closed); throws one that failed. */
  async settle(): Promise<void> {
    await this.#inFlight;
    if (this.#error) throw this.#error;
  }
}
