/**
 * What one upload of a large cached file costs in memory: S3Storage.put of
 * FILE (a file body, as the uploader sends it) to an S3 endpoint, with the
 * process's RSS sampled every 5 ms. Run it at two commits to compare upload
 * paths. docs/BENCHMARKS.md, session 10.
 *
 *   node_modules/.bin/bun scripts/bench_upload_rss.ts FILE ENDPOINT BUCKET
 *
 * Credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (s3rver
 * takes S3RVER / S3RVER).
 *
 * @module
 */

import fs from "node:fs";
import process from "node:process";
import { S3Storage } from "../src/replica/s3.ts";

const [file, endpoint, bucket] = process.argv.slice(2);
if (!file || !endpoint || !bucket) {
  console.error("usage: bench_upload_rss.ts FILE ENDPOINT BUCKET");
  process.exit(2);
}
const storage = new S3Storage({ bucket, prefix: "bench-upload", region: "us-east-1", endpoint, forcePathStyle: true });
const size = fs.statSync(file).size;
let peak = 0;
const timer = setInterval(() => peak = Math.max(peak, process.memoryUsage().rss), 5);
const start = process.memoryUsage().rss;
const t0 = performance.now();
await storage.put("object", { path: file, size });
clearInterval(timer);
const mib = (n: number) => (n / 1048576).toFixed(0);
console.log(`${size} bytes in ${(performance.now() - t0).toFixed(0)} ms; RSS ${mib(start)} MiB before, peak ${mib(peak)} MiB`);
storage.close();
