/**
 * The directory watch (src/replicate/watcher.ts). A busy writer turns every
 * write to its WAL into a file event, and each event wakes the runtime's
 * watch thread, at a cost to the writer itself; so a database woken too
 * often makes its directory go unwatched for a while, and the databases
 * that had events are woken on a timer instead. A quiet neighbour is not
 * polled, but is woken at the end of the pause if its WAL changed during
 * it; a quiet writer keeps its events, and the watch comes back.
 *
 * The writes come from another process (Python), as an app's would.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { BUSY_POLL_MS, PAUSE_MS, watchDatabase, watchState } from "../src/replicate/watcher.ts";
import { test } from "./_runtime.ts";
import { sleep, withTempDir } from "./_util.ts";

/** Writes 4 KiB pages to `file` from another process for `ms`, pausing `gapMs` between writes; the count. */
function writeFor(file: string, ms: number, gapMs = 0): Promise<number> {
  const script = `
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
end = time.time() + float(sys.argv[2]) / 1000
gap = float(sys.argv[3]) / 1000
n = 0
while time.time() < end:
    os.pwrite(fd, b"x" * 4096, (n % 256) * 4096)
    n += 1
    if gap:
        time.sleep(gap)
print(n)
`;
  return new Promise((resolve, reject) => {
    const child = spawn("python3", ["-c", script, file, String(ms), String(gapMs)]);
    let out = "";
    child.stdout.on("data", (c) => out += c);
    child.on("error", reject);
    child.on("exit", (code) => code === 0 ? resolve(Number(out.trim())) : reject(new Error(`writer exited ${code}`)));
  });
}

function makeDb(dir: string, name: string): string {
  const db = path.join(dir, name);
  fs.writeFileSync(db, "");
  fs.writeFileSync(`${db}-wal`, "");
  return db;
}

test("a storm of WAL writes stops the directory's watch; the busy database is woken on a timer, its quiet neighbour only once its WAL changed, and the watch comes back", () =>
  withTempDir("watch-storm", async (dir) => {
    const hotDb = makeDb(dir, "hot.db");
    const coldDb = makeDb(dir, "cold.db");
    const hot: number[] = [];
    const cold: number[] = [];
    // A poll of a minute: every wake seen here comes from an event or from the busy poll.
    const hotWatch = watchDatabase(hotDb, 60_000, (event) => event && hot.push(Date.now()));
    const coldWatch = watchDatabase(coldDb, 60_000, (event) => event && cold.push(Date.now()));
    try {
      assert.deepEqual(watchState(dir), { watching: true, paused: false, pauses: 0 });

      const stormStart = Date.now();
      const storm = writeFor(`${hotDb}-wal`, 1200);
      for (let i = 0; i < 200 && !watchState(dir)!.paused; i++) await sleep(5);
      assert.equal(watchState(dir)!.paused, true, "the storm paused the watch");
      // The quiet database commits while nothing is watched (no await in between: still paused).
      const quietWriteAt = Date.now();
      fs.writeFileSync(`${coldDb}-wal`, new Uint8Array(4096).fill(1));
      const writes = await storm;
      const stormEnd = Date.now();
      const during = hot.filter((t) => t >= stormStart && t <= stormEnd);
      const state = watchState(dir)!;
      assert.ok(state.pauses >= 2, `a 1.2 s storm of ${writes} writes paused the watch ${state.pauses} time(s), expected at least 2`);
      assert.ok(during.length >= 1200 / BUSY_POLL_MS / 4, `the busy database was woken ${during.length} times during the storm`);
      assert.ok(during.length < writes / 10, `${during.length} wakes for ${writes} writes: the events were not cut off`);
      // While unwatched it is still woken every BUSY_POLL_MS, never left for a whole pause.
      const gaps = during.slice(1).map((t, i) => t - during[i]);
      assert.ok(Math.max(...gaps) < PAUSE_MS - 50, `longest wait between wakes during the storm: ${Math.max(...gaps)} ms`);
      assert.deepEqual(cold.filter((t) => t < quietWriteAt), [], "the quiet database is neither woken by its neighbour's events nor polled");
      const quietWoken = cold.find((t) => t >= quietWriteAt);
      assert.ok(
        quietWoken !== undefined && quietWoken - quietWriteAt <= PAUSE_MS + 250,
        `the quiet database's write during a pause woke it ${quietWoken === undefined ? "never" : `after ${quietWoken - quietWriteAt} ms`}`,
      );

      await sleep(PAUSE_MS + 300);
      assert.equal(watchState(dir)!.paused, false, "the pause ended");
      assert.equal(watchState(dir)!.watching, true, "the directory is watched again");

      // Events again: one write to the quiet database's WAL wakes it (its poll is a minute away).
      const coldBefore = cold.length;
      await writeFor(`${coldDb}-wal`, 1);
      for (let i = 0; i < 40 && cold.length === coldBefore; i++) await sleep(50);
      assert.ok(cold.length > coldBefore, "the quiet database is woken by its own write once the watch is back");

      // A writer at 50 writes a second is not a storm.
      const pauses = watchState(dir)!.pauses;
      const before = hot.length;
      await writeFor(`${hotDb}-wal`, 600, 20);
      await sleep(100);
      assert.equal(watchState(dir)!.pauses, pauses, "a quiet writer does not pause the watch");
      assert.ok(hot.length > before, "and its events still wake it");
    } finally {
      hotWatch.close();
      coldWatch.close();
    }
    assert.equal(watchState(dir), null, "closing the last watch forgets the directory");
  }));

test("closing the last watch during a pause stops its timers", () =>
  withTempDir("watch-close", async (dir) => {
    const db = makeDb(dir, "a.db");
    let wakes = 0;
    const watch = watchDatabase(db, 60_000, (event) => event && wakes++);
    const storm = writeFor(`${db}-wal`, 400);
    for (let i = 0; i < 100 && !watchState(dir)?.paused; i++) await sleep(10);
    assert.equal(watchState(dir)?.paused, true, "the storm paused the watch");
    watch.close();
    const atClose = wakes;
    await storm;
    await sleep(PAUSE_MS + 100);
    assert.equal(wakes, atClose, "no wake after close");
    assert.equal(watchState(dir), null);
  }));
