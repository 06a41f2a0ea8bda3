/**
 * Point in time (DESIGN.md invariant 7), against a real s3rver: a writer
 * commits one numbered row per transaction with quiet pauses between
 * commits while an in-process replicator ships them. Then `restore
 * --timestamp T` gives the last transaction observed at or before T, never
 * a later one and never one much earlier; `--txid N` gives exactly N; and
 * targets outside the replica fail with one line that says why.
 *
 * Two runs: one segment per commit (a 50 ms sync interval), where the cut
 * falls between objects, and several commits per segment (a 1 s sync
 * interval), where it falls inside one.
 *
 * Time bookkeeping: the writer records Date.now() right after each commit
 * returns (its time, "at"); walship records when it observed each commit.
 * The writer runs in this process and SQLite commits synchronously, so
 * walship can only observe a commit after its "at": observed >= at always.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { WalshipError } from "../src/errors.ts";
import { parseObjectKey, type SegmentEntry } from "../src/replica/layout.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { restoreDatabase } from "../src/restore/restore.ts";
import {
  assertOneLineError,
  assertRestoredK,
  openWriter,
  readRestored,
  replicatorFor,
  SECRET,
  sha256,
  walship,
} from "./_restore_fixtures.ts";
import { startS3Server } from "./_s3_server.ts";
import { test } from "./_runtime.ts";
import { prng, removeTempDirs, sleep, tempDir } from "./_util.ts";

const COMMITS = 10;
/** How late walship may observe a commit and still count as on time (the brief's bound). */
const MAX_LAG = 250;
/** Instants this long after a commit are past its observation (for the exact-k checks). */
const SETTLED = 100;

interface Commit {
  k: number;
  /** Date.now() just before the commit began. */
  started: number;
  /** Date.now() right after the commit returned. */
  at: number;
}

interface Scenario {
  name: string;
  syncInterval: number;
  pollInterval: number;
  /** Checks the segments the run produced. */
  segments(segs: SegmentEntry[]): void;
}

const SCENARIOS: Scenario[] = [
  {
    name: "one commit per segment",
    syncInterval: 50,
    pollInterval: 50,
    segments(segs) {
      assert.equal(segs.length, COMMITS);
      for (const s of segs) assert.equal(s.firstTxid, s.lastTxid, s.key);
    },
  },
  {
    name: "several commits per segment",
    syncInterval: 1000,
    pollInterval: 50,
    segments(segs) {
      assert.ok(segs.length < COMMITS, `${segs.length} segments for ${COMMITS} commits`);
      assert.ok(
        segs.some((s) => s.lastTxid - s.firstTxid >= 2),
        "a segment holds three commits or more",
      );
    },
  },
];

for (const scenario of SCENARIOS) {
  test(`point in time, ${scenario.name}: --timestamp gives the last commit observed at or before it, --txid exactly N`, async () => {
    const seed = Date.now() >>> 0;
    const rand = prng(seed);
    const uniform = () => rand() / 2 ** 32;
    const ctx = `(${scenario.name}, seed ${seed})`;
    const s3 = await startS3Server({ buckets: ["pit"] });
    const dir = tempDir("pit");
    try {
      const url = s3.url("pit", "app");
      const env = { ...s3.env, AWS_SECRET_ACCESS_KEY: SECRET };
      const storage = openReplica(url, { env: s3.env });

      // ---- The run: k = 0 exists before replication starts; k = 1..COMMITS after.
      const started0 = Date.now();
      const writer = await openWriter(path.join(dir, "app.db"));
      const commits: Commit[] = [{ k: 0, started: started0, at: Date.now() }];
      const replicator = replicatorFor(writer.db, storage, {
        syncInterval: scenario.syncInterval,
        pollInterval: scenario.pollInterval,
      });
      await replicator.start();
      for (let k = 1; k <= COMMITS; k++) {
        await sleep(150 + Math.floor(uniform() * 150));
        const started = Date.now();
        commits.push({ k, started, at: writer.commit() });
      }
      await sleep(300);
      const end = Date.now();
      await replicator.stop();
      writer.close(); // checkpoints: the database file is now the image at the last commit

      // ---- (c) first: the txid ↔ k relation, from what `walship generations --json` reports.
      const gens = await walship(["generations", "--json", url], { env });
      assert.equal(gens.code, 0, gens.stderr);
      const [gen, ...others] = JSON.parse(gens.stdout);
      assert.equal(others.length, 0, "one generation");
      assert.deepEqual(
        { firstTxid: gen.firstTxid, lastTxid: gen.lastTxid, snapshots: gen.snapshots },
        { firstTxid: 1, lastTxid: COMMITS + 1, snapshots: 1 },
        "the snapshot holds k = 0, then one txid per commit",
      );
      const kOf = (txid: number) => txid - gen.firstTxid;
      const listed = (await storage.list(`${gen.generation}/`)).map((o) =>
        parseObjectKey(gen.generation, o.key, o.size)!
      );
      const segments = listed.filter((e): e is SegmentEntry => e.kind === "segment");
      scenario.segments(segments);
      const snapshotTime = listed.find((e) => e.kind === "snapshot")!.time;

      // When walship observed each txid: what a restore to exactly that txid reports,
      // which must agree with the segment keys' first and last times.
      const observed = new Map<number, number>();
      for (let txid = 1; txid <= COMMITS + 1; txid++) {
        const r = await restoreDatabase({
          storage,
          output: path.join(dir, `obs-${txid}.db`),
          target: { txid },
        });
        assert.equal(r.txid, txid);
        observed.set(txid, r.time);
      }
      assert.equal(observed.get(1), snapshotTime);
      for (const s of segments) {
        assert.equal(observed.get(s.firstTxid), s.firstTime, s.key);
        assert.equal(observed.get(s.lastTxid), s.lastTime, s.key);
      }
      for (const c of commits.slice(1)) {
        const seen = observed.get(c.k + 1)!;
        assert.ok(
          seen >= c.at,
          `commit ${c.k} observed (${seen}) before it returned (${c.at}) ${ctx}`,
        );
        assert.ok(
          seen - c.at <= MAX_LAG,
          `commit ${c.k} observed ${seen - c.at} ms after it returned ${ctx}`,
        );
      }

      // The latest state is byte for byte the checkpointed source database.
      const latest = path.join(dir, "latest.db");
      const l = await restoreDatabase({ storage, output: latest });
      assert.equal(l.txid, COMMITS + 1);
      assert.equal(
        sha256(latest),
        sha256(writer.db),
        "latest restore equals the source database, byte for byte",
      );

      // ---- (a) instants inside the quiet gaps give exactly that commit, through the CLI.
      for (let k = 0; k <= COMMITS; k++) {
        const from = k === 0 ? snapshotTime : commits[k].at + SETTLED;
        const until = k === COMMITS ? end : commits[k + 1].started - 1;
        assert.ok(from <= until, `gap after commit ${k} too short to test ${ctx}`);
        const t = from + Math.floor(uniform() * (until - from + 1));
        // One instant written with a numeric offset: the same moment, RFC 3339 all the same.
        const stamp = k === 3 ? withOffset(t, 5 * 60 + 30) : new Date(t).toISOString();
        assert.match(stamp, /\.\d{3}(Z|[+-]\d\d:\d\d)$/);
        const out = path.join(dir, `gap-${k}.db`);
        const run = await walship(["restore", "--json", "-o", out, "--timestamp", stamp, url], {
          env,
        });
        assert.equal(run.code, 0, `restore --timestamp ${stamp}: ${run.stderr}`);
        assert.equal(run.stderr, "");
        const result = JSON.parse(run.stdout);
        assert.equal(
          kOf(result.txid),
          k,
          `--timestamp ${stamp} (${t - commits[k].at} ms after commit ${k}) ${ctx}`,
        );
        assert.equal(result.time, observed.get(k + 1));
        assert.ok(result.time <= t);
        assertRestoredK(out, k, `--timestamp ${stamp}`);
      }

      // ---- (b) random instants anywhere in the run: never later than the writer's last
      // commit at or before T, never earlier than its last commit at or before T - 250 ms,
      // and exactly the last commit walship observed at or before T.
      const lastCommitAt = (t: number) => commits.filter((c) => c.at <= t).at(-1)?.k ?? -1;
      for (let i = 0; i < 20; i++) {
        const t = snapshotTime + Math.floor(uniform() * (end - snapshotTime + 1));
        const out = path.join(dir, `random-${i}.db`);
        const r = await restoreDatabase({ storage, output: out, target: { timestamp: t } });
        const k = kOf(r.txid);
        const why = `instant ${new Date(t).toISOString()} ${ctx}`;
        assert.ok(
          k <= lastCommitAt(t),
          `${why}: restored k ${k} is later than the last commit ${lastCommitAt(t)}`,
        );
        assert.ok(
          k >= lastCommitAt(t - MAX_LAG),
          `${why}: restored k ${k} is older than ${MAX_LAG} ms allows`,
        );
        const exact = Math.max(
          ...[...observed].filter(([, seen]) => seen <= t).map(([txid]) => kOf(txid)),
        );
        assert.equal(k, exact, `${why}: not the last commit observed at or before it`);
        assert.deepEqual(readRestored(out), { integrity: "ok", rows: k + 1, maxK: k }, why);
      }
      // Exactly at an observation and one millisecond before it.
      for (const txid of [2, Math.ceil(COMMITS / 2), COMMITS + 1]) {
        const seen = observed.get(txid)!;
        const at = await restoreDatabase({
          storage,
          output: path.join(dir, `at-${txid}.db`),
          target: { timestamp: seen },
        });
        assert.equal(at.txid, txid, `at the instant txid ${txid} was observed ${ctx}`);
        const justBefore = await restoreDatabase({
          storage,
          output: path.join(dir, `before-${txid}.db`),
          target: { timestamp: seen - 1 },
        });
        assert.equal(justBefore.txid, txid - 1, `1 ms before txid ${txid} was observed ${ctx}`);
        assertRestoredK(path.join(dir, `before-${txid}.db`), kOf(txid - 1));
      }

      // ---- (c) --txid N gives exactly N, through the CLI.
      for (const txid of [1, 2, 6, COMMITS, COMMITS + 1]) {
        const out = path.join(dir, `txid-${txid}.db`);
        const run = await walship(["restore", "-o", out, "--txid", String(txid), url], { env });
        assert.equal(run.code, 0, run.stderr);
        assert.match(
          run.stdout,
          new RegExp(`^restored .*: txid ${txid} of generation ${gen.generation},`),
        );
        assertRestoredK(out, kOf(txid), `--txid ${txid}`);
      }

      // ---- (d) targets outside the replica: one line each, nothing written.
      for (const t of [started0 - 60_000, snapshotTime - 1]) { // before the generation; inside it, before its snapshot
        const out = path.join(dir, `before-${t}.db`);
        const stamp = new Date(t).toISOString();
        const run = await walship(["restore", "-o", out, "--timestamp", stamp, url], { env });
        assertOneLineError(run, `s3://pit/app holds no state at or before ${stamp}`);
        assert.ok(!fs.existsSync(out));
      }
      const beyond = path.join(dir, "beyond.db");
      const run = await walship(["restore", "-o", beyond, "--txid", String(COMMITS + 5), url], {
        env,
      });
      assertOneLineError(
        run,
        `txid ${COMMITS + 5} is not in s3://pit/app (the latest is ${COMMITS + 1})`,
      );
      assert.ok(!fs.existsSync(beyond));
      await assert.rejects(
        restoreDatabase({
          storage,
          output: path.join(dir, "x.db"),
          target: { timestamp: snapshotTime - 1 },
        }),
        (err: unknown) => err instanceof WalshipError && err.code === "NOT_FOUND",
      );
      (storage as { close?: () => void }).close?.();
    } finally {
      await s3.close();
      removeTempDirs();
    }
  });
}

/** RFC 3339 with milliseconds at a fixed offset of `minutes` east of UTC. */
function withOffset(t: number, minutes: number): string {
  const local = new Date(t + minutes * 60_000).toISOString().slice(0, 23);
  const sign = minutes < 0 ? "-" : "+";
  const m = Math.abs(minutes);
  return `${local}${sign}${String(Math.floor(m / 60)).padStart(2, "0")}:${
    String(m % 60).padStart(2, "0")
  }`;
}
