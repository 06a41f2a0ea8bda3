/**
 * EarlyWriteback (src/durable.ts), which lets a restore's large image be
 * written back while it is written: one fdatasync at a time every so many
 * bytes, waited for before the descriptor is synced or closed, and a failed
 * one is not lost (the kernel reports a write-back error once).
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { EarlyWriteback } from "../src/durable.ts";
import { test } from "./_runtime.ts";
import { withTempDir } from "./_util.ts";

test("EarlyWriteback syncs once per `every` bytes, one at a time, and settle waits for it", () =>
  withTempDir("writeback", async (dir) => {
    const fd = fs.openSync(path.join(dir, "image"), "w");
    try {
      const wb = new EarlyWriteback(fd, 1000);
      const chunk = new Uint8Array(600).fill(7);
      let at = 0;
      const write = () => {
        fs.writeSync(fd, chunk, 0, chunk.length, at);
        at += chunk.length;
        wb.wrote(chunk.length);
      };
      write();
      assert.equal(wb.syncs, 0, "600 bytes: not yet");
      write();
      assert.equal(wb.syncs, 1, "1,200 bytes: one sync");
      write();
      write();
      assert.equal(wb.syncs, 1, "another 1,200 bytes while the first is in flight: none more");
      await wb.settle();
      write();
      write();
      assert.equal(wb.syncs, 2, "once it is done, the next 1,000 bytes start another");
      await wb.settle();
      assert.equal(fs.fstatSync(fd).size, 6 * 600);
    } finally {
      fs.closeSync(fd);
    }
  }));

test("EarlyWriteback keeps a failed sync and settle throws it", async () => {
  const wb = new EarlyWriteback(1 << 30, 1); // no such descriptor: fdatasync fails with EBADF
  wb.wrote(1);
  await assert.rejects(wb.settle(), /EBADF|Bad file descriptor/);
  await assert.rejects(wb.settle(), /EBADF|Bad file descriptor/, "and keeps throwing it");
});
