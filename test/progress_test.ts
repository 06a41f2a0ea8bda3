/**
 * The progress bar of long commands: its pure formatting (bytes, rate, ETA,
 * the whole line), the renderer's throttling and terminal-only drawing, the
 * progress hooks of restoreDatabase and writeSnapshotObject (bytes counted
 * against the planned total, ending at total/total), and that `walship
 * restore` with stderr not a terminal prints nothing but its result.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import {
  createProgress,
  formatBytes,
  formatEta,
  formatProgressLine,
  formatRate,
  type ProgressStream,
} from "../src/cli/progress.ts";
import { newGenerationId, segmentKey, snapshotKey } from "../src/replica/layout.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { SegmentBuilder, segmentBytes } from "../src/replicate/segment_builder.ts";
import { writeSnapshotObject } from "../src/replicate/snapshot_object.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { test } from "./_runtime.ts";
import { prng, spawnWalship, withTempDir } from "./_util.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

test("formatBytes: binary units, three significant digits", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1), "1 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1024), "1.0 KiB");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(10 * MiB), "10.0 MiB");
  assert.equal(formatBytes(99.9 * MiB), "99.9 MiB");
  assert.equal(formatBytes(123 * GiB), "123 GiB");
  assert.equal(formatBytes(1023.99 * KiB), "1.0 MiB", "never 1024 KiB");
  assert.equal(formatBytes(3 * 1024 * GiB), "3.0 TiB");
  assert.equal(formatBytes(-1), "? B");
  assert.equal(formatBytes(NaN), "? B");
});

test("formatRate: per second, '-' until known", () => {
  assert.equal(formatRate(3 * MiB), "3.0 MiB/s");
  assert.equal(formatRate(512), "512 B/s");
  assert.equal(formatRate(0), "- B/s");
  assert.equal(formatRate(NaN), "- B/s");
  assert.equal(formatRate(Infinity), "- B/s");
});

test("formatEta: seconds, minutes, hours; '--' when unknown", () => {
  assert.equal(formatEta(0), "0s");
  assert.equal(formatEta(0.2), "1s", "rounded up: never 0s while work remains");
  assert.equal(formatEta(42), "42s");
  assert.equal(formatEta(60), "1m00s");
  assert.equal(formatEta(185), "3m05s");
  assert.equal(formatEta(3600 + 2 * 60 + 30), "1h02m");
  assert.equal(formatEta(200 * 3600), ">99h");
  assert.equal(formatEta(NaN), "--");
  assert.equal(formatEta(Infinity), "--");
  assert.equal(formatEta(-1), "--");
});

test("formatProgressLine: bar, percent, done/total, rate, ETA", () => {
  assert.equal(
    formatProgressLine("restoring", 512, 1024, 1000),
    "restoring [##########----------]  50%  512 B / 1.0 KiB  512 B/s  ETA 1s",
  );
  assert.equal(
    formatProgressLine("restoring", 410 * MiB, GiB, 10_000),
    "restoring [########------------]  40%  410 MiB / 1.0 GiB  41.0 MiB/s  ETA 15s",
  );
  assert.equal(
    formatProgressLine("snapshot", GiB, GiB, 20_000),
    "snapshot [####################] 100%  1.0 GiB / 1.0 GiB  51.2 MiB/s  ETA 0s",
  );
  assert.equal(
    formatProgressLine("restoring", 0, GiB, 0),
    "restoring [--------------------]   0%  0 B / 1.0 GiB  - B/s  ETA --",
  );
  assert.equal(formatProgressLine("restoring", 2 * MiB, 0, 1000), "restoring 2.0 MiB  2.0 MiB/s", "unknown total");
  assert.match(formatProgressLine("x", 5, 4, 1000), /\[#{20}\] 100%/, "never past 100%");
});

/** A fake terminal (or pipe) that records what is written. */
function fakeStream(isTTY: boolean, columns?: number): ProgressStream & { text: string } {
  return {
    isTTY,
    columns,
    text: "",
    write(t: string) {
      this.text += t;
      return true;
    },
  };
}

test("createProgress: nothing at all when the stream is not a terminal", () => {
  const pipe = fakeStream(false);
  assert.equal(createProgress({ label: "restoring", stream: pipe }), null);
  assert.equal(pipe.text, "");
});

test("createProgress on a terminal: waits, redraws at most every interval with \\r, ends with a newline", () => {
  const tty = fakeStream(true);
  let t = 1000;
  const p = createProgress({ label: "restoring", stream: tty, now: () => t, intervalMs: 100, delayMs: 300 })!;
  assert.ok(p);
  p.update(0, 1000);
  t += 200;
  p.update(100, 1000);
  assert.equal(tty.text, "", "nothing during the first 300 ms");
  t += 100; // 300 ms in
  p.update(300, 1000);
  assert.equal(tty.text, `\r${formatProgressLine("restoring", 300, 1000, 300)}`);
  const drawn = tty.text.length;
  for (let i = 0; i < 9; i++) {
    t += 10;
    p.update(300 + i, 1000);
  }
  assert.equal(tty.text.length, drawn, "throttled: no redraw within 100 ms");
  t += 10; // 100 ms after the last draw
  p.update(400, 1000);
  assert.equal((tty.text.match(/\r/g) ?? []).length, 2);
  assert.ok(tty.text.endsWith(formatProgressLine("restoring", 400, 1000, 400)));
  t += 5;
  p.update(1000, 1000);
  p.finish();
  assert.ok(tty.text.endsWith(`\r${formatProgressLine("restoring", 1000, 1000, 405)}\n`), "final state, then newline");
  p.finish();
  p.update(5, 1000);
  assert.ok(tty.text.endsWith("\n"), "finish is idempotent; updates after it draw nothing");
  assert.ok(!tty.text.includes("\n") || tty.text.indexOf("\n") === tty.text.length - 1, "one newline only");
});

test("createProgress: a quick run prints nothing, not even a newline; lines fit the terminal", () => {
  const tty = fakeStream(true);
  let t = 0;
  const p = createProgress({ label: "restoring", stream: tty, now: () => t })!;
  p.update(0, 10);
  t = 50;
  p.update(10, 10);
  p.finish();
  assert.equal(tty.text, "");

  const narrow = fakeStream(true, 40);
  const q = createProgress({ label: "restoring", stream: narrow, now: () => t, delayMs: 0 })!;
  q.update(5, 10);
  q.finish();
  for (const line of narrow.text.split(/[\r\n]/)) assert.ok(line.length < 40, `fits 40 columns: ${JSON.stringify(line)}`);
});

const PAGE = 4096;

/** A replica with a snapshot of `pages` random pages (txid 1) and one heal segment (txid 2); returns the db bytes. */
async function buildReplica(dir: string, storage: ReplicaStorage, pages: number): Promise<Uint8Array> {
  const rand = prng(7);
  const image = new Uint8Array(pages * PAGE);
  const v = new DataView(image.buffer);
  for (let i = 0; i < image.length; i += 4) v.setUint32(i, rand());
  const imagePath = path.join(dir, "image");
  fs.writeFileSync(imagePath, image);
  const t0 = Date.UTC(2026, 10, 21);
  const generation = newGenerationId(t0 - 1000);
  const objectPath = path.join(dir, "snapshot-object");

  const calls: Array<[number, number]> = [];
  await writeSnapshotObject(imagePath, {
    kind: "snapshot", generation, pageSize: PAGE, txid: 1, time: t0, position: null, bigEndian: false, dbSize: pages,
  }, objectPath, { onProgress: (done, total) => void calls.push([done, total]) });
  assert.deepEqual(calls[0], [0, image.length], "snapshot progress starts at 0 of the image size");
  assert.deepEqual(calls.at(-1), [image.length, image.length], "and ends at the image size");
  assert.ok(calls.length >= 3, `several updates for a multi-MiB image: ${calls.length}`);
  for (let i = 1; i < calls.length; i++) {
    assert.ok(calls[i][0] >= calls[i - 1][0] && calls[i][1] === image.length, "monotonic, constant total");
  }
  await storage.put(snapshotKey(generation, 1, t0), fs.readFileSync(objectPath));

  const page = new Uint8Array(PAGE).fill(0xab);
  const builder = new SegmentBuilder(1, null, pages, false);
  builder.addHeal({ dbSize: pages, time: t0 + 1000, position: null, bigEndian: false, pages: [{ pgno: 2, page }] });
  const seg = builder.build(generation, PAGE);
  await storage.put(segmentKey(generation, seg.meta), segmentBytes(seg));
  builder.commit();
  image.set(page, PAGE);
  return image;
}

test("restoreDatabase onProgress and writeSnapshotObject onProgress: bytes up to the planned total", () =>
  withTempDir("progress", async (dir) => {
    const storage = openReplica(pathToFileURL(path.join(dir, "replica")).href);
    const expected = await buildReplica(dir, storage, 768); // 3 MiB
    const objects = await storage.list("");
    const total = objects.reduce((n, o) => n + o.size, 0);
    assert.equal(objects.length, 2);

    const calls: Array<[number, number]> = [];
    const out = path.join(dir, "restored.db");
    const r = await restoreDatabase({ storage, output: out, onProgress: (d, t) => void calls.push([d, t]) });
    assert.equal(r.txid, 2);
    assert.deepEqual(new Uint8Array(fs.readFileSync(out)), expected, "restored the exact bytes");
    assert.deepEqual(calls[0], [0, total], "starts at 0 of snapshot + segment sizes");
    assert.deepEqual(calls.at(-1), [total, total], "ends at total");
    assert.ok(calls.length >= 3, `updates as bytes arrive: ${calls.length}`);
    for (let i = 1; i < calls.length; i++) {
      assert.ok(calls[i][0] >= calls[i - 1][0] && calls[i][0] <= total && calls[i][1] === total, `call ${i}`);
    }

    // To txid 1: the segment past the target is not part of the total.
    const calls1: Array<[number, number]> = [];
    await restoreDatabase({
      storage,
      output: path.join(dir, "at1.db"),
      target: { txid: 1 },
      onProgress: (d, t) => void calls1.push([d, t]),
    });
    const snapshotSize = objects.find((o) => o.key.endsWith(".wsnap"))!.size;
    assert.deepEqual(calls1.at(-1), [snapshotSize, snapshotSize]);
  }));

test("walship restore with stderr not a terminal prints no progress, only its result", () =>
  withTempDir("progress-cli", async (dir) => {
    const replica = path.join(dir, "replica");
    await buildReplica(dir, openReplica(pathToFileURL(replica).href), 768);
    const out = path.join(dir, "restored.db");
    const child = spawnWalship(["restore", "-o", out, replica]);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const code = await new Promise<number>((resolve) => child.on("close", (c) => resolve(c ?? -1)));
    assert.equal(code, 0, stderr);
    assert.equal(stderr, "", "nothing on stderr: no bar, no \\r");
    assert.match(stdout, /^restored \S+: txid 2 of generation \S+, observed \S+Z, 768 pages of 4096 bytes, from 2 objects\n$/);
  }));
