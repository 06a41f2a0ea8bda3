/**
 * Small helpers every kind of test uses: a seeded PRNG, sleeping and
 * polling, temporary directories, free ports, and the command that runs the
 * walship CLI from source on the current runtime. Fixtures for one kind of
 * test live in `_wal_fixtures.ts`, `_restore_fixtures.ts` and
 * `_replication_fixtures.ts`.
 *
 * @module
 */

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import fs from "node:fs";
import { connect, createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { runtimeName } from "./_runtime.ts";

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MAIN = path.join(ROOT, "src", "cli", "main.ts");

// ---------------------------------------------------------------- randomness

/**
 * mulberry32: a small seeded PRNG giving u32s.
 *
 * @example
 * ```ts
 * const rand = prng(42);
 * const size = between(rand, 16, 1500);
 * ```
 */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** A random integer in [min, max]. */
export function between(rand: () => number, min: number, max: number): number {
  return min + (rand() % (max - min + 1));
}

// ---------------------------------------------------------------- time

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> =>
  new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Polls `check` every `everyMs` until it returns a truthy value, and returns
 * that; fails after `timeoutMs` naming `what` (a function is called only
 * then, so it can describe the state at the time).
 *
 * @example
 * ```ts
 * await waitFor("the cache to drain", () => fs.readdirSync(cache).length === 0, 30_000);
 * ```
 */
export async function waitFor<T>(
  what: string | (() => string),
  check: () => T | Promise<T>,
  timeoutMs = 20_000,
  everyMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) {
      const description = typeof what === "string" ? what : what();
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}`);
    }
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------- temporary directories

// Set WALSHIP_KEEP_TEST_DIRS to keep every test directory, to look at after a failure.
const keep = () => !!process.env.WALSHIP_KEEP_TEST_DIRS;
const registered: string[] = [];

function makeTempDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `walship-${name}-`));
}

/** A fresh directory `walship-<name>-XXXXXX` under os.tmpdir(), removed by {@linkcode removeTempDirs}. */
export function tempDir(name: string): string {
  const dir = makeTempDir(name);
  registered.push(dir);
  return dir;
}

/** Removes every directory {@linkcode tempDir} made so far (unless WALSHIP_KEEP_TEST_DIRS is set). */
export function removeTempDirs(): void {
  for (const dir of registered.splice(0)) {
    if (!keep()) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Runs `fn` with a fresh directory, removed afterwards (kept when
 * WALSHIP_KEEP_TEST_DIRS is set).
 *
 * @example
 * ```ts
 * await withTempDir("restart", async (dir) => {
 *   fs.writeFileSync(path.join(dir, "app.db"), bytes);
 * });
 * ```
 */
export async function withTempDir<T>(
  name: string,
  fn: (dir: string) => T | Promise<T>,
): Promise<T> {
  const dir = makeTempDir(name);
  try {
    return await fn(dir);
  } finally {
    if (!keep()) fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- ports

/** A TCP port on 127.0.0.1 nothing listens on (bound, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Whether a TCP connection to `port` on 127.0.0.1 succeeds. */
export function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

// ---------------------------------------------------------------- the walship CLI

/** How the current runtime runs the CLI from source: the executable and its arguments. */
export function walshipCommand(args: string[]): [string, string[]] {
  return [
    process.execPath,
    runtimeName === "deno" ? ["run", "-A", MAIN, ...args] : [MAIN, ...args],
  ];
}

/** Options for {@linkcode spawnWalship}. */
export interface SpawnWalshipOptions {
  /** Added to the environment (after the AWS settings and WALSHIP_DEBUG are taken out). */
  env?: Record<string, string>;
  /** Run this executable (the compiled dist/walship) instead of the source on this runtime. */
  executable?: string;
  /** A command that runs walship for us, e.g. `["setpriv", "--reuid=65534", …]` to run it as another user. */
  wrap?: string[];
}

/**
 * Starts `walship <args>` in the repository root. The child inherits this
 * process's environment minus `AWS_*` (so only the credentials a test hands
 * in are seen) and WALSHIP_DEBUG (stack traces), plus NO_COLOR and `env`.
 *
 * @example
 * ```ts
 * const child = spawnWalship(["generations", url, "--json"], { env: s3.env });
 * ```
 */
export function spawnWalship(
  args: string[],
  options: SpawnWalshipOptions = {},
): ChildProcessWithoutNullStreams {
  const [command, argv] = options.executable ? [options.executable, args] : walshipCommand(args);
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("AWS_") && k !== "WALSHIP_DEBUG") env[k] = v;
  }
  const wrap = options.wrap ?? [];
  const [file, ...rest] = [...wrap, command, ...argv];
  return spawn(file, rest, { cwd: ROOT, env: { ...env, NO_COLOR: "1", ...options.env } });
}
