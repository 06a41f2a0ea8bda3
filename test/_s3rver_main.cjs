#!/usr/bin/env node
/**
 * Runs s3rver 3.7.1 as the tests' local S3 server, under Node (s3rver is a
 * Koa app and is only trusted on Node). Started by `test/_s3_server.ts`.
 *
 *   node test/_s3rver_main.cjs --port 0 --dir /tmp/x --bucket a --bucket b
 *
 * Prints `READY <port>` once listening. Exits on SIGTERM/SIGINT, and when
 * its stdin closes (then also removing --dir), so a test process that dies
 * never leaves a server or its files behind.
 *
 * Two of s3rver's faults are patched so tests see what real S3 does:
 * - continuation tokens use single DES, which OpenSSL 3 lacks, so every
 *   truncated ListObjectsV2 answer fails with 500;
 * - its listing walk prunes directories below a common prefix and follows
 *   directory order, so a delimiter listing drops prefixes whose objects sit
 *   two or more levels down, and keys like `a-x` and `a/y` come out of order.
 */
"use strict";

const crypto = require("node:crypto");

// DES with key K is 3DES-EDE with key K|K|K (the E-D pair cancels out), which
// OpenSSL 3 still offers. s3rver calls `crypto.createCipheriv` at request
// time, so patching the module object before loading it is enough.
function tripleKey(algorithm, key) {
  if (String(algorithm).toLowerCase() !== "des") return [algorithm, key];
  const k = Buffer.from(key);
  return ["des-ede3-cbc", Buffer.concat([k, k, k])];
}
const createCipheriv = crypto.createCipheriv;
const createDecipheriv = crypto.createDecipheriv;
crypto.createCipheriv = function (algorithm, key, iv, options) {
  const [a, k] = tripleKey(algorithm, key);
  return createCipheriv.call(crypto, a, k, iv, options);
};
crypto.createDecipheriv = function (algorithm, key, iv, options) {
  const [a, k] = tripleKey(algorithm, key);
  return createDecipheriv.call(crypto, a, k, iv, options);
};

const S3rver = require("s3rver");
const FilesystemStore = require("s3rver/lib/stores/filesystem");
const S3Object = require("s3rver/lib/models/object");
const { walk } = require("s3rver/lib/utils");

const OBJECT_SUFFIX = "._S3rver_object";

/**
 * s3rver's listObjects, minus the pruning: collect every object key that
 * intersects `prefix`, sort it as S3 does, then page and group by delimiter.
 * Like s3rver, max-keys counts objects only (its continuation token is the
 * last object key); common prefixes are deduplicated by the client.
 */
FilesystemStore.prototype.listObjects = async function listObjects(bucket, options) {
  const { delimiter = "", startAfter = "", prefix = "", maxKeys = Infinity } = options;
  const bucketPath = this.getBucketPath(bucket);
  const prefixPath = [bucketPath, prefix].join("/");
  const it = walk(bucketPath, (dir) => dir.startsWith(prefixPath) || prefixPath.startsWith(dir));
  const all = [];
  for (const path of it) {
    if (!path.endsWith(OBJECT_SUFFIX)) continue;
    const key = path.slice(bucketPath.length + 1, -OBJECT_SUFFIX.length);
    if (key > startAfter && key.startsWith(prefix)) all.push(key);
  }
  // S3 orders by UTF-8 bytes; Buffer.compare does exactly that.
  all.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));

  const commonPrefixes = new Set();
  const keys = [];
  let isTruncated = false;
  for (const key of all) {
    const idx = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
    if (idx !== -1) {
      commonPrefixes.add(key.slice(0, idx + delimiter.length));
      continue;
    }
    if (keys.length === maxKeys) {
      isTruncated = true;
      break;
    }
    keys.push(key);
  }
  const objects = [];
  for (const key of keys) {
    try {
      objects.push(new S3Object(bucket, key, null, await this.getMetadata(bucket, key)));
    } catch (err) {
      if (err.code !== "ENOENT") throw err; // deleted while listing
    }
  }
  return { objects, commonPrefixes: [...commonPrefixes].sort(), isTruncated };
};

function parseArgs(argv) {
  const opts = { port: 0, dir: "", buckets: [] };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === "--port") opts.port = Number(value);
    else if (argv[i] === "--dir") opts.dir = value;
    else if (argv[i] === "--bucket") opts.buckets.push(value);
    else throw new Error(`unknown argument ${argv[i]}`);
    i++;
  }
  if (!opts.dir || !Number.isInteger(opts.port)) {
    throw new Error("usage: _s3rver_main.cjs --port P --dir D [--bucket NAME]...");
  }
  return opts;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const server = new S3rver({
    address: "127.0.0.1",
    port: opts.port,
    directory: opts.dir,
    silent: true,
    configureBuckets: opts.buckets.map((name) => ({ name })),
  });
  const { port } = await server.run();
  const stop = () => {
    server.close().finally(() => process.exit(0));
    // Keep-alive sockets can hold close() open; do not wait for them.
    setTimeout(() => process.exit(0), 500).unref();
  };
  // The parent closing our stdin means it is gone and nobody will restart
  // us on this directory, so remove it (SIGTERM from stop() keeps the data).
  const orphaned = () => {
    process.on("exit", () => require("node:fs").rmSync(opts.dir, { recursive: true, force: true }));
    stop();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdin.on("end", orphaned);
  process.stdin.on("error", orphaned);
  process.stdin.resume();
  process.stdout.write(`READY ${port}\n`);
}

main().catch((err) => {
  process.stderr.write(`s3rver: ${err && err.stack || err}\n`);
  process.exit(1);
});
