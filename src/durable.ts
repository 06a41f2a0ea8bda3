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

/** Writes `data` to `target` durably and atomically (temp, fsync, rename, fsync dir). */
export function writeFileDurable(target: string, data: Uint8Array | Uint8Array[]): void {
  const tmp = tempPathBeside(target);
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      for (const part of Array.isArray(data) ? data : [data]) {
        let done = 0;
        while (done < part.length) done += fs.writeSync(fd, part, done, part.length - done);
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
