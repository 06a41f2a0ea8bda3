/**
 * How a restore fetches segments: ahead of the one it applies, in order, no
 * more than `parallelism` at once and no more than `aheadBytes` of them
 * (as listed) beyond the one being applied, with one always fetched however
 * large. A storage wrapper around a real file replica (built by a real
 * replicator) counts the downloads in flight; each download takes a few
 * milliseconds, so a window that let more through would show it.
 */

import assert from "node:assert/strict";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { openReplica } from "../src/replica/open_replica.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import { assertRestoredK, buildReplica } from "./_restore_fixtures.ts";
import { test } from "./_runtime.ts";
import { withTempDir } from "./_util.ts";

const COMMITS = 24;

/** Downloads of segments as they happened: how many and how many bytes were in flight at most, in which order they began. */
interface Watch {
  storage: ReplicaStorage;
  order: number[];
  maxInFlight: number;
  /** Most bytes of segments in flight together, at moments with more than one in flight. */
  maxBytesTogether: number;
}

function watched(inner: ReplicaStorage, sizes: Map<string, number>, txidOf: Map<string, number>): Watch {
  const inFlight = new Map<string, number>();
  const w: Watch = { storage: inner, order: [], maxInFlight: 0, maxBytesTogether: 0 };
  const get = async (key: string): Promise<Uint8Array> => {
    if (!txidOf.has(key)) return inner.get(key);
    w.order.push(txidOf.get(key)!);
    inFlight.set(key, sizes.get(key)!);
    w.maxInFlight = Math.max(w.maxInFlight, inFlight.size);
    if (inFlight.size > 1) {
      w.maxBytesTogether = Math.max(w.maxBytesTogether, [...inFlight.values()].reduce((a, b) => a + b, 0));
    }
    await new Promise((r) => setTimeout(r, 5));
    try {
      return await inner.get(key);
    } finally {
      inFlight.delete(key);
    }
  };
  w.storage = new Proxy(inner, {
    get: (target, prop) => {
      if (prop === "get") return get;
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return w;
}

test("restore fetches segments in order, at most `parallelism` at once and at most `aheadBytes` ahead (one always), and restores exactly", () =>
  withTempDir("fetch-window", async (dir) => {
    const storage = openReplica(pathToFileURL(path.join(dir, "replica")).href);
    const built = await buildReplica(dir, storage, COMMITS);
    const sizes = new Map<string, number>();
    for (const o of await storage.list(`${built.generation}/`)) sizes.set(o.key, o.size);
    const txidOf = new Map([...built.segments].map(([txid, key]) => [key, txid]));
    const segmentSizes = [...built.segments.values()].map((k) => sizes.get(k)!);
    const largest = Math.max(...segmentSizes);
    const smallest = Math.min(...segmentSizes);
    const allTxids = [...built.segments.keys()];

    // In flight at most: exactly this many, or [least, most].
    const cases: Array<{ name: string; parallelism?: number; aheadBytes?: number; inFlight: number | [number, number] }> = [
      { name: "the defaults (32 at once, 64 MiB): every segment at once", inFlight: COMMITS },
      { name: "parallelism 4", parallelism: 4, inFlight: 4 },
      { name: "parallelism 1", parallelism: 1, inFlight: 1 },
      // Room for any two segments together, and for no more of the smallest than fit.
      { name: "aheadBytes of two segments", aheadBytes: 2 * largest, inFlight: [2, Math.floor((2 * largest) / smallest)] },
      // Smaller than any segment: still one at a time, never none.
      { name: "aheadBytes of 1 byte", aheadBytes: 1, inFlight: 1 },
    ];
    for (const c of cases) {
      const w = watched(storage, sizes, txidOf);
      const output = path.join(dir, `out-${c.parallelism ?? "d"}-${c.aheadBytes ?? "d"}.db`);
      const r = await restoreDatabase({ storage: w.storage, output, parallelism: c.parallelism, aheadBytes: c.aheadBytes });
      assert.equal(r.txid, built.lastTxid, c.name);
      assertRestoredK(output, COMMITS, c.name);
      assert.deepEqual(w.order, allTxids, `${c.name}: fetched once each, in order`);
      const [least, most] = typeof c.inFlight === "number" ? [c.inFlight, c.inFlight] : c.inFlight;
      assert.ok(w.maxInFlight >= least && w.maxInFlight <= most, `${c.name}: ${w.maxInFlight} downloads in flight at most`);
      if (c.aheadBytes !== undefined) {
        assert.ok(w.maxBytesTogether <= c.aheadBytes, `${c.name}: ${w.maxBytesTogether} bytes in flight, allowed ${c.aheadBytes}`);
      }
    }
  }));
