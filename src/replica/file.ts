/**
 * A replica in a local directory (`file:///dir`): one file per object key,
 * `/` in keys mapping to subdirectories. Writes are atomic and durable
 * (temp file, fsync, rename, fsync of the directory), so a crash leaves the
 * old object or the new one, never a torn one.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import {
  copyFile,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rmdir,
  stat,
  truncate,
  unlink,
} from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import { WalshipError } from "../errors.ts";
import { emptyStats } from "./storage.ts";
import type { ObjectInfo, PutBody, ReplicaStorage, StorageStats } from "./storage.ts";

// A put's temp file: `<key>.tmp-<16 hex>`; listings skip these leftovers.
const TMP = /\.tmp-[0-9a-f]{16}$/;
const CHUNK = 1 << 20;

/**
 * {@linkcode ReplicaStorage} over a local directory, created on first write.
 *
 * @example
 * ```ts
 * const storage = new FileStorage("/var/backups/app");
 * await storage.put("generations/0001/snapshot", bytes);
 * const keys = await storage.list("generations/");
 * ```
 */
export class FileStorage implements ReplicaStorage {
  readonly location: string;
  readonly stats: StorageStats = emptyStats();
  readonly #root: string;

  /** `dir` must be absolute (see `parseReplicaUrl`). */
  constructor(dir: string) {
    this.#root = dir;
    this.location = pathToFileURL(dir).href;
  }

  async put(key: string, body: PutBody): Promise<void> {
    const path = this.#path("PUT", key);
    const tmp = `${path}.tmp-${randomBytes(8).toString("hex")}`;
    try {
      await this.#mkdirs(dirname(path));
      if (body instanceof Uint8Array) {
        const fh = await open(tmp, "wx");
        try {
          await fh.writeFile(body);
          await fh.sync();
        } finally {
          await fh.close();
        }
      } else {
        await copyFile(body.path, tmp);
        // Store exactly `size` bytes, as S3 does: a file that grew is cut,
        // one that shrank is an error rather than a short object.
        const actual = (await stat(tmp)).size;
        if (actual < body.size) {
          throw new WalshipError("IO", `${body.path} holds ${actual} bytes, expected ${body.size}`);
        }
        if (actual > body.size) await truncate(tmp, body.size);
        await fsyncPath(tmp, "r+");
      }
      await rename(tmp, path);
      await fsyncPath(dirname(path));
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw fileError("PUT", err, this.#url(key));
    }
    this.stats.puts++;
    this.stats.bytesUp += body instanceof Uint8Array ? body.length : body.size;
  }

  async get(key: string): Promise<Uint8Array> {
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await readFile(this.#path("GET", key)));
    } catch (err) {
      throw fileError("GET", err, this.#url(key));
    }
    this.stats.gets++;
    this.stats.bytesDown += bytes.length;
    return bytes;
  }

  async getStream(key: string): Promise<AsyncIterable<Uint8Array>> {
    const where = this.#url(key);
    // Open now so a missing object fails here, not on first read.
    const fh = await open(this.#path("GET", key), "r").catch((err) => {
      throw fileError("GET", err, where);
    });
    this.stats.gets++;
    const stats = this.stats;
    return (async function* () {
      try {
        while (true) {
          const buf = new Uint8Array(CHUNK);
          const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
          if (bytesRead === 0) return;
          stats.bytesDown += bytesRead;
          yield buf.subarray(0, bytesRead);
        }
      } catch (err) {
        throw fileError("GET", err, where);
      } finally {
        await fh.close();
      }
    })();
  }

  async list(prefix: string, options: { startAfter?: string } = {}): Promise<ObjectInfo[]> {
    // Walk only the deepest directory the prefix names.
    const base = prefix.slice(0, prefix.lastIndexOf("/") + 1);
    const out: ObjectInfo[] = [];
    try {
      for await (const key of walk(this.#root, base)) {
        if (!key.startsWith(prefix)) continue;
        if (options.startAfter !== undefined && key <= options.startAfter) continue;
        out.push({ key, size: (await stat(join(this.#root, key))).size });
      }
    } catch (err) {
      throw fileError("LIST", err, this.#url(prefix));
    }
    this.stats.lists++;
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async listChildren(prefix: string): Promise<string[]> {
    if (prefix !== "" && !prefix.endsWith("/")) {
      throw new WalshipError("BAD_ARGUMENT", `listChildren prefix must end in "/": "${prefix}"`);
    }
    const children: string[] = [];
    try {
      for (const entry of await readdirOrEmpty(join(this.#root, prefix))) {
        if (!entry.isDirectory()) continue;
        // Like an S3 delimiter listing: a child exists only if it holds an object.
        const first = await walk(this.#root, `${prefix}${entry.name}/`).next();
        if (!first.done) children.push(entry.name);
      }
    } catch (err) {
      throw fileError("LIST", err, this.#url(prefix));
    }
    this.stats.lists++;
    return children.sort();
  }

  async delete(keys: string[]): Promise<void> {
    for (const key of keys) {
      const path = this.#path("DELETE", key);
      try {
        await unlink(path);
      } catch (err) {
        if (codeOf(err) !== "ENOENT") throw fileError("DELETE", err, this.#url(key));
      }
      await this.#pruneEmptyDirs(dirname(path));
      this.stats.deletes++;
    }
  }

  #path(op: string, key: string): string {
    const parts = key.split("/");
    if (key === "" || parts.some((p) => p === "" || p === "." || p === "..")) {
      throw new WalshipError(
        "BAD_ARGUMENT",
        `[${op}] ${this.location}: invalid object key "${key}"`,
      );
    }
    return join(this.#root, ...parts);
  }

  #url(key: string): string {
    return key === "" ? this.location : `${this.location}/${key}`;
  }

  /** mkdir -p, then fsync the parent of every directory it created. */
  async #mkdirs(dir: string): Promise<void> {
    const first = await mkdir(dir, { recursive: true });
    if (first === undefined) return;
    for (let d = dir;; d = dirname(d)) {
      await fsyncPath(dirname(d));
      if (d === first || d === dirname(d)) break;
    }
  }

  /** Removes directories left empty by a delete, up to (not including) the root. */
  async #pruneEmptyDirs(dir: string): Promise<void> {
    while (relative(this.#root, dir) !== "" && !relative(this.#root, dir).startsWith("..")) {
      try {
        await rmdir(dir);
      } catch {
        return; // not empty (or gone): stop
      }
      dir = dirname(dir);
    }
  }
}

/** Object keys below `base` (a key prefix ending in `/`, or empty), unsorted. */
async function* walk(root: string, base: string): AsyncGenerator<string> {
  for (const entry of await readdirOrEmpty(join(root, base))) {
    const key = base + entry.name;
    if (entry.isDirectory()) yield* walk(root, `${key}/`);
    else if (entry.isFile() && !TMP.test(entry.name)) yield key;
  }
}

async function readdirOrEmpty(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (err) {
    const code = codeOf(err);
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw err;
  }
}

async function fsyncPath(path: string, flags = "r"): Promise<void> {
  const fh = await open(path, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** One-line error naming the operation and the object's location. */
function fileError(op: string, err: unknown, where: string): WalshipError {
  if (err instanceof WalshipError) {
    return err.message.startsWith("[")
      ? err
      : new WalshipError(err.code, `[${op}] ${where}: ${err.message}`, { cause: err });
  }
  const e = err as { code?: string; path?: string; message?: string };
  const at = `[${op}] ${where}`;
  const path = e.path ? ` (${e.path})` : "";
  switch (e.code) {
    case "ENOENT":
    case "EISDIR":
      return op === "GET"
        ? new WalshipError("NOT_FOUND", `${at}: no such object`, { cause: err })
        : new WalshipError("IO", `${at}: no such file or directory${path}`, { cause: err });
    case "ENOSPC":
    case "EDQUOT":
      // Not the error's path: a copy reports its source (the local cache), not the full destination.
      return new WalshipError("IO", `${at}: disk full: free space and retry`, {
        cause: err,
        transient: true,
      });
    case "EACCES":
    case "EPERM":
      return new WalshipError(
        "ACCESS_DENIED",
        `${at}: permission denied${path}: check the directory's owner and mode`,
        { cause: err },
      );
    case "EROFS":
      return new WalshipError("IO", `${at}: read-only file system${path}`, { cause: err });
    case "ENOTDIR":
    case "EEXIST":
      return new WalshipError("IO", `${at}: a parent of this path is not a directory${path}`, {
        cause: err,
      });
    default:
      return new WalshipError("IO", `${at}: ${e.code ?? "error"}: ${oneLine(String(e.message))}`, {
        cause: err,
      });
  }
}

function codeOf(err: unknown): string | undefined {
  return (err as { code?: string } | null)?.code;
}

function oneLine(text: string): string {
  return String(text).replace(/\s*\n\s*/g, " ").trim();
}
