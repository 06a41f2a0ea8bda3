/**
 * A full disk, for real: a tmpfs of 1 MiB mounted for the test (it needs
 * root, as CI runs; without it the tests fail saying so, they never skip).
 *
 * - restore onto a full disk, whether the snapshot or the segments fill it:
 *   exit 1, one line saying "disk full", nothing left in the directory, and
 *   an existing output (with --force) untouched;
 * - replicate to a file replica on a full disk: one warning line naming the
 *   replica and "disk full" (not the local cache's file), walship keeps
 *   running with the objects in its cache, and once there is room again
 *   they are uploaded: the restore holds every commit, and no temp file is
 *   left in the replica.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { openReplica } from "../src/replica/open_replica.ts";
import {
  assertOneLineError,
  assertRestoredK,
  openWriter,
  readRestored,
  replicatorFor,
  startWalship,
  walship,
} from "./_restore_fixtures.ts";
import { test } from "./_runtime.ts";
import { waitFor, withTempDir } from "./_util.ts";

const SMALL = 1 << 20;

/** Mounts a tmpfs of `bytes` at `dir/name` for `fn`, then unmounts it. */
async function withSmallDisk<T>(dir: string, name: string, bytes: number, fn: (at: string) => Promise<T>): Promise<T> {
  const at = path.join(dir, name);
  fs.mkdirSync(at);
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${bytes}`, "tmpfs", at], { encoding: "utf8" });
  if (r.status !== 0) {
    throw new Error(`the full-disk tests mount a tmpfs, which needs root (CI runs as root): ${(r.stderr ?? "").trim()}`);
  }
  try {
    return await fn(at);
  } finally {
    spawnSync("umount", ["-l", at]);
  }
}

/** A file replica of a database holding `rows` rows of 30 KB of random bytes, in its snapshot or in segments. */
async function replicaOf(dir: string, rows: number, where: "snapshot" | "segments"): Promise<string> {
  const replicaDir = path.join(dir, `replica-${where}`);
  const storage = openReplica(pathToFileURL(replicaDir).href);
  const w = await openWriter(path.join(dir, `${where}.db`), 30_000);
  if (where === "snapshot") for (let i = 0; i < rows; i++) w.commit();
  const r = replicatorFor(w.db, storage);
  try {
    await r.start();
    if (where === "segments") {
      for (let i = 0; i < rows; i++) {
        w.commit();
        if (i % 10 === 9) await r.flush();
      }
    }
    await r.flush();
  } finally {
    await r.stop();
    w.close();
  }
  return pathToFileURL(replicaDir).href;
}

test("restore onto a full disk: one line 'disk full', nothing left behind, an existing output untouched", () =>
  withTempDir("full-disk-restore", async (dir) => {
    const fromSnapshot = await replicaOf(dir, 100, "snapshot"); // 3 MB in the snapshot
    const fromSegments = await replicaOf(dir, 100, "segments"); // 3 MB in segments
    await withSmallDisk(dir, "small", SMALL, async (small) => {
      for (const url of [fromSnapshot, fromSegments]) {
        const out = path.join(small, "out.db");
        const run = await walship(["restore", "-o", out, url]);
        assertOneLineError(run, `cannot write ${out}: disk full`);
        assert.deepEqual(fs.readdirSync(small), [], `${url}: nothing left on the full disk`);

        fs.writeFileSync(out, "the old database");
        const forced = await walship(["restore", "--force", "-o", out, url]);
        assertOneLineError(forced, `cannot write ${out}: disk full`);
        assert.deepEqual(fs.readdirSync(small), ["out.db"], `${url}: only the old output`);
        assert.equal(fs.readFileSync(out, "utf8"), "the old database", `${url}: the old output is untouched`);
        fs.rmSync(out);
      }
    });
    // The same replicas restore where there is room.
    for (const url of [fromSnapshot, fromSegments]) {
      const out = path.join(dir, `roomy-${fromSnapshot === url ? "snapshot" : "segments"}.db`);
      const run = await walship(["restore", "-o", out, url]);
      assert.equal(run.code, 0, run.stderr);
      assertRestoredK(out, 100);
    }
  }));

test("replicate to a file replica on a full disk: one warning, keeps running, uploads once there is room; nothing lost", () =>
  withTempDir("full-disk-replicate", async (dir) => {
    await withSmallDisk(dir, "disk", SMALL, async (disk) => {
      const replica = path.join(disk, "replica");
      const w = await openWriter(path.join(dir, "app.db"), 30_000);
      const rep = startWalship(["replicate", w.db, pathToFileURL(replica).href, "--sync-interval", "100ms"]);
      try {
        await waitFor("replication to start", () => /"message":"replicating"/.test(rep.stderr), 30_000);
        for (let i = 0; i < 100; i++) w.commit(); // 3 MB of random rows: more than the disk holds
        await waitFor("the disk-full warning", () => /disk full/.test(rep.stderr), 30_000);
        const warnings = rep.stderr.split("\n").filter((l) => /disk full/.test(l));
        const warning = JSON.parse(warnings[0]) as { level: string; message: string };
        assert.equal(warning.level, "WARN");
        assert.match(warning.message, new RegExp(`\\[PUT\\] ${pathToFileURL(replica).href}/\\S+: disk full: free space and retry`));
        assert.doesNotMatch(warning.message, /walship\/objects|-walship/, "the message names the replica, not the local cache");
        assert.ok(rep.running(), "walship keeps running");

        for (let i = 0; i < 10; i++) w.commit(); // more commits while the disk is full
        const remount = spawnSync("mount", ["-o", `remount,size=${64 << 20}`, disk], { encoding: "utf8" });
        assert.equal(remount.status, 0, remount.stderr);
        await waitFor("the upload after space came back", () => /reachable again/.test(rep.stderr), 30_000);
        const k = w.next - 1;
        const out = path.join(dir, "restored.db");
        await waitFor("every commit to be restorable", async () => {
          fs.rmSync(out, { force: true });
          const run = await walship(["restore", "-o", out, pathToFileURL(replica).href]);
          return run.code === 0 && readRestored(out).maxK === k;
        }, 30_000, 200);
        assertRestoredK(out, k);
        const leftovers = fs.readdirSync(replica, { recursive: true }).map(String).filter((f) => /\.tmp-/.test(f));
        assert.deepEqual(leftovers, [], "no temp file left in the replica");
      } finally {
        rep.signal("SIGTERM");
        await rep.exited;
        w.close();
      }
    });
  }));
