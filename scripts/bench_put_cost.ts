/**
 * What one small PUT costs walship's process in CPU: N sequential
 * S3Storage.put calls of one cached file (a file body, as the uploader
 * sends segments), and the same N GETs back, with the process's user and
 * system CPU (process.cpuUsage) and wall time for each batch. This is the
 * per-object floor under workload 4's replicate CPU (1,148 PUTs) and every
 * restore's GETs. docs/BENCHMARKS.md, "What stands in the way".
 *
 *   node_modules/.bin/bun scripts/bench_put_cost.ts ENDPOINT BUCKET [N] [BYTES]
 *
 * N defaults to 1000, BYTES (the object size) to 32000, about workload 4's
 * average object. Credentials from AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY (s3rver takes S3RVER / S3RVER).
 *
 * @module
 */

import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import { S3Storage } from "../src/replica/s3.ts";

const [endpoint, bucket, nArg, bytesArg] = process.argv.slice(2);
if (!endpoint || !bucket) {
  console.error("usage: bench_put_cost.ts ENDPOINT BUCKET [N] [BYTES]");
  process.exit(2);
}
const n = Number(nArg ?? 1000);
const bytes = Number(bytesArg ?? 32000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "walship-put-cost-"));
const file = path.join(dir, "object");
fs.writeFileSync(file, crypto.randomBytes(bytes));
const storage = new S3Storage({
  bucket,
  prefix: `bench-put-cost-${Date.now()}`,
  region: "us-east-1",
  endpoint,
  forcePathStyle: true,
});

async function batch(label: string, one: (i: number) => Promise<unknown>): Promise<void> {
  await one(-1); // warm: the first request pays for loading and connecting
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await one(i);
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const per = (us: number) => (us / 1000 / n).toFixed(2);
  console.log(
    `${label}: ${n} × ${bytes} bytes in ${(wall / 1000).toFixed(2)} s; per object ` +
      `${(wall / n).toFixed(2)} ms wall, ${per(cpu.user)} ms user, ${per(cpu.system)} ms sys`,
  );
}

const key = (i: number) => `o-${String(i + 1).padStart(6, "0")}`;
await batch("PUT", (i) => storage.put(key(i), { path: file, size: bytes }));
await batch("GET", (i) => storage.get(key(i)));
storage.close();
fs.rmSync(dir, { recursive: true, force: true });
