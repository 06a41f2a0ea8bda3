/**
 * WalPin.open when the -shm appears between its two opens (fa6d45e). It
 * opens the -shm for writing first, so that it can set read marks; a -shm
 * that does not exist yet means "try again later". Falling back to a
 * read-only open instead would, when an app created the -shm in between,
 * pin without read marks for good: an app's TRUNCATE checkpoint then waits
 * on walship's slot for its whole busy timeout. The window is microseconds
 * wide, so the race is staged: the first open for writing reports ENOENT
 * while the file is there, as if the app had created it a moment later.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { WalPin } from "../src/capture/pin.ts";
import type { FileLocks } from "../src/runtime.ts";
import { test } from "./_runtime.ts";
import { ConnectionHolder, fileLocks } from "./_pin_fixtures.ts";
import { withTempDir } from "./_util.ts";

const ENOENT = 2;

test("a -shm created between the pin's two opens is not pinned read-only: open gives up, and the next try pins with read marks", () =>
  withTempDir("pin-open", async (dir) => {
    const db = path.join(dir, "app.db");
    // A real connection keeps the database open in WAL mode, so its -shm exists.
    const app = await ConnectionHolder.open(db, [
      "PRAGMA journal_mode=WAL",
      "CREATE TABLE t(x)",
      "INSERT INTO t VALUES (1)",
    ]);
    try {
      assert.ok(fs.existsSync(`${db}-shm`), "the app's connection made a -shm");
      const locks = await fileLocks();
      let raced = 0;
      const racing: FileLocks = {
        open(p, write) {
          if (p.endsWith("-shm") && write && raced === 0) {
            raced++;
            return { fd: -1, errno: ENOENT }; // not there yet when looked for writing...
          }
          return locks.open(p, write); // ...and there for every open after it
        },
        close: (fd) => locks.close(fd),
        setLock: (fd, type, start, len) => locks.setLock(fd, type, start, len),
        testLock: (fd, type, start, len) => locks.testLock(fd, type, start, len),
      };

      const early = WalPin.open(racing, db);
      assert.equal(raced, 1, "the staged race happened");
      const earlyMarks = early?.marks;
      early?.close();
      assert.equal(early, null, `open pinned anyway (read marks: ${earlyMarks}) instead of trying again later`);

      const pin = WalPin.open(racing, db);
      assert.ok(pin, "the next try pins");
      try {
        assert.equal(pin.marks, true, "with read marks: its -shm is open for writing");
      } finally {
        pin.close();
      }
    } finally {
      await app.close();
    }
  }));
