/**
 * A real local S3 server for tests: s3rver 3.7.1 run by Node in a child
 * process (`_s3rver_main.cjs`), usable from Deno and Bun alike. It can be
 * stopped and started again on the same port and directory, which is a real
 * outage for the client under test, with the data still there afterwards.
 *
 * @example
 * ```ts
 * const s3 = await startS3Server({ buckets: ["b"] });
 * try {
 *   const storage = openReplica(s3.url("b", "db"), { env: s3.env });
 * } finally {
 *   await s3.close();
 * }
 * ```
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { portAnswers, sleep, waitFor } from "./_util.ts";

/** Options for {@linkcode startS3Server}. */
export interface S3ServerOptions {
  /** Buckets to create at start. */
  buckets?: string[];
  /** Port to listen on; 0 (the default) picks a free one. */
  port?: number;
}

/** A running (or stopped) local S3 server. */
export interface S3Server {
  /** `http://127.0.0.1:PORT`. */
  readonly endpoint: string;
  readonly port: number;
  /** Credentials and region the server accepts, for `openReplica(url, { env })`. */
  readonly env: Record<string, string>;
  /** The replica URL `s3://bucket/prefix?endpoint=...`. */
  url(bucket: string, prefix?: string): string;
  /** Creates a bucket (no error if it exists). */
  createBucket(name: string): Promise<void>;
  /** Kills the server (SIGKILL by default): a real outage, data kept on disk. */
  stop(signal?: "SIGKILL" | "SIGTERM"): Promise<void>;
  /** Starts it again on the same port and directory. */
  start(): Promise<void>;
  /** Stops the server and removes its directory. */
  close(): Promise<void>;
}

const MAIN = fileURLToPath(new URL("./_s3rver_main.cjs", import.meta.url));
const ENV = {
  AWS_ACCESS_KEY_ID: "S3RVER",
  AWS_SECRET_ACCESS_KEY: "S3RVER",
  AWS_REGION: "us-east-1",
};

// Every child still alive when the test process exits is killed and every
// directory not yet closed is removed. The child also exits when its stdin
// closes, which covers a test process that is itself killed.
const live = new Set<ChildProcess>();
const dirs = new Set<string>();
function cleanUp(): void {
  for (const child of live) child.kill("SIGKILL");
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  live.clear();
  dirs.clear();
}
// `deno test` and `bun test` do not emit process "exit"; Deno fires "unload".
process.on("exit", cleanUp);
(globalThis as { addEventListener?: (type: string, fn: () => void) => void }).addEventListener?.(
  "unload",
  cleanUp,
);

/**
 * Starts s3rver on 127.0.0.1 with a fresh temporary directory.
 *
 * @example
 * ```ts
 * const s3 = await startS3Server({ buckets: ["b"] });
 * await s3.stop(); // outage
 * await s3.start(); // back, same port and data
 * await s3.close();
 * ```
 */
export async function startS3Server(options: S3ServerOptions = {}): Promise<S3Server> {
  const dir = mkdtempSync(join(tmpdir(), "walship-s3rver-"));
  dirs.add(dir);
  let child: ChildProcess | undefined;
  let port = options.port ?? 0;
  const buckets = [...(options.buckets ?? [])];

  const launch = async (): Promise<void> => {
    const args = [MAIN, "--port", String(port), "--dir", dir];
    for (const b of buckets) args.push("--bucket", b);
    // The port was just freed when restarting; retry if it is not yet reusable.
    let lastError: unknown;
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        const started = await spawnServer(args);
        child = started.child;
        port = started.port;
        await waitFor(`port ${port} to answer`, () => portAnswers(port), 5_000, 50);
        return;
      } catch (err) {
        lastError = err;
        await sleep(200);
      }
    }
    throw new Error(`s3rver did not start: ${String(lastError)}`);
  };

  await launch();
  const endpoint = `http://127.0.0.1:${port}`;

  const server: S3Server = {
    endpoint,
    port,
    env: { ...ENV },
    url: (bucket, prefix = "") =>
      `s3://${bucket}/${prefix}?endpoint=${encodeURIComponent(endpoint)}`,
    async createBucket(name) {
      buckets.push(name); // so a restart keeps creating it (a no-op when it exists)
      const client = new S3Client({
        endpoint,
        region: ENV.AWS_REGION,
        forcePathStyle: true,
        credentials: {
          accessKeyId: ENV.AWS_ACCESS_KEY_ID,
          secretAccessKey: ENV.AWS_SECRET_ACCESS_KEY,
        },
      });
      try {
        await client.send(new CreateBucketCommand({ Bucket: name }));
      } catch (err) {
        if (
          (err as Error).name !== "BucketAlreadyOwnedByYou" &&
          (err as Error).name !== "BucketAlreadyExists"
        ) throw err;
      } finally {
        client.destroy();
      }
    },
    async stop(signal = "SIGKILL") {
      const c = child;
      child = undefined;
      if (c) await killAndWait(c, signal);
    },
    async start() {
      if (!child) await launch();
    },
    async close() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
  return server;
}

/** Spawns the Node script and waits for its `READY <port>` line. */
function spawnServer(args: string[]): Promise<{ child: ChildProcess; port: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn("node", args, { stdio: ["pipe", "pipe", "pipe"] });
    live.add(child);
    let out = "";
    let err = "";
    const fail = (why: string) => {
      child.kill("SIGKILL");
      reject(new Error(`${why}${err ? `: ${err.trim()}` : ""}`));
    };
    const timer = setTimeout(() => fail("s3rver: no READY line within 15 s"), 15_000);
    child.stdout!.on("data", (chunk: Uint8Array) => {
      out += new TextDecoder().decode(chunk);
      const m = /READY (\d+)\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    });
    child.stderr!.on("data", (chunk: Uint8Array) => (err += new TextDecoder().decode(chunk)));
    child.on("exit", (code, signal) => {
      live.delete(child);
      clearTimeout(timer);
      fail(`s3rver exited (${code ?? signal}) before READY`); // no-op once resolved
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

function killAndWait(child: ChildProcess, signal: "SIGKILL" | "SIGTERM"): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    // By pid, not child.kill(): Deno's kill() closes the child's stdin first,
    // and the server takes stdin EOF for "orphaned" and starts deleting its
    // directory, so an outage would sometimes lose the bucket's objects.
    process.kill(child.pid!, signal);
  });
}
