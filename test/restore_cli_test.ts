/**
 * `walship restore` flags and the listing commands, as a person runs them:
 * an existing output is refused without --force (and left alone), replaced
 * with it (stale -wal and -shm removed); --if-db-not-exists and
 * --if-replica-exists exit 0 quietly; an empty replica otherwise fails with
 * "holds no backup"; `generations` and `snapshots` report two generations
 * with their exact txid ranges and counts, as tables and as JSON.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { openReplica } from "../src/replica/open_replica.ts";
import {
  assertOneLineError,
  assertRestoredK,
  buildReplica,
  cli,
  listDir,
  openWriter,
  replicatorFor,
  SECRET,
  sha256,
  walship,
} from "./_restore_fixtures.ts";
import { startS3Server } from "./_s3_server.ts";
import { test } from "./_runtime.ts";
import { removeTempDirs, tempDir } from "./_util.ts";

test("an existing output: refused without --force, replaced with it, stale -wal and -shm removed", async () => {
  try {
    const dir = tempDir("force");
    const replica = path.join(dir, "replica");
    await buildReplica(dir, openReplica(replica), 3); // txids 1..4, k = 0..3
    const reference = path.join(dir, "reference.db");
    assert.equal((await cli(["restore", "-o", reference, replica])).code, 0);
    assertRestoredK(reference, 3);

    const outDir = path.join(dir, "out");
    fs.mkdirSync(outDir);
    const out = path.join(outDir, "app.db");
    fs.writeFileSync(out, "an older database I care about");
    fs.writeFileSync(`${out}-wal`, "its stale wal");
    fs.writeFileSync(`${out}-shm`, "its stale shm");

    const refused = await walship(["restore", "-o", out, replica]);
    assertOneLineError(refused, `${out} exists: pass --force to replace it`);
    assert.equal(fs.readFileSync(out, "utf8"), "an older database I care about");
    assert.deepEqual(listDir(outDir), ["app.db", "app.db-shm", "app.db-wal"]);

    const forced = await walship(["restore", "--force", "-o", out, replica]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal(forced.stderr, "");
    assert.match(
      forced.stdout,
      new RegExp(
        `^restored ${out}: txid 4 of generation \\S+, observed \\S+Z, 2 pages of 4096 bytes, from 4 objects\\n$`,
      ),
    );
    assert.deepEqual(
      listDir(outDir),
      ["app.db"],
      "stale -wal and -shm are gone, no temp file left",
    );
    assert.equal(sha256(out), sha256(reference), "the same bytes as a restore into a fresh path");
    assertRestoredK(out, 3);
  } finally {
    removeTempDirs();
  }
});

test("--if-db-not-exists: quiet exit 0 when the output exists, a normal restore when it does not", async () => {
  try {
    const dir = tempDir("if-db");
    const replica = path.join(dir, "replica");
    await buildReplica(dir, openReplica(replica), 2);
    const out = path.join(dir, "app.db");
    fs.writeFileSync(out, "already here");
    const run = await walship(["restore", "--if-db-not-exists", "-o", out, replica]);
    assert.deepEqual(run, { code: 0, stdout: "", stderr: "" });
    assert.equal(fs.readFileSync(out, "utf8"), "already here");
    // It does not even look at the replica: an unreachable one does not matter.
    const unreachable = await walship(
      ["restore", "--if-db-not-exists", "-o", out, "s3://b/p?endpoint=http://127.0.0.1:9"],
      { env: { AWS_SECRET_ACCESS_KEY: SECRET } },
    );
    assert.deepEqual(unreachable, { code: 0, stdout: "", stderr: "" });

    const fresh = path.join(dir, "fresh.db");
    const restored = await cli(["restore", "--if-db-not-exists", "-o", fresh, replica]);
    assert.equal(restored.code, 0, restored.stderr);
    assertRestoredK(fresh, 2);
  } finally {
    removeTempDirs();
  }
});

test("an empty replica: 'holds no backup' and exit 1, or a quiet exit 0 with --if-replica-exists", async () => {
  const s3 = await startS3Server({ buckets: ["empty"] });
  try {
    const dir = tempDir("empty");
    const emptyDir = path.join(dir, "empty-replica");
    fs.mkdirSync(emptyDir);
    const env = { ...s3.env, AWS_SECRET_ACCESS_KEY: SECRET };
    const replicas: Array<[string, string]> = [
      [emptyDir, `file://${emptyDir}`],
      [path.join(dir, "never-created"), `file://${path.join(dir, "never-created")}`],
      [s3.url("empty", "app"), "s3://empty/app"],
    ];
    for (const [url, location] of replicas) {
      const out = path.join(dir, "out.db");
      const failed = await walship(["restore", "-o", out, url], { env });
      assertOneLineError(
        failed,
        `replica ${location} holds no backup: run walship replicate first, or pass --if-replica-exists`,
      );
      const quiet = await walship(["restore", "--if-replica-exists", "-o", out, url], { env });
      assert.deepEqual(quiet, { code: 0, stdout: "", stderr: "" }, url);
      assert.deepEqual(
        listDir(dir).filter((n) => n.startsWith("out.db")),
        [],
        "no output for an empty replica",
      );
    }
    // --if-replica-exists changes nothing when there is a backup.
    const replica = path.join(dir, "replica");
    await buildReplica(dir, openReplica(replica), 1);
    const out = path.join(dir, "restored.db");
    const restored = await walship(["restore", "--if-replica-exists", "-o", out, replica]);
    assert.equal(restored.code, 0, restored.stderr);
    assertRestoredK(out, 1);
    // Listing an empty replica is not an error.
    assert.deepEqual(await cli(["generations", emptyDir]), {
      code: 0,
      stdout: "no generations: the replica is empty\n",
      stderr: "",
    });
    assert.deepEqual(await cli(["snapshots", "--json", emptyDir]), {
      code: 0,
      stdout: "[]\n",
      stderr: "",
    });
  } finally {
    await s3.close();
    removeTempDirs();
  }
});

test("generations and snapshots report two generations with their txid ranges and counts", async () => {
  const s3 = await startS3Server({ buckets: ["gens"] });
  try {
    const dir = tempDir("gens");
    const url = s3.url("gens", "app");
    const env = { ...s3.env, AWS_SECRET_ACCESS_KEY: SECRET };
    const storage = openReplica(url, { env: s3.env });
    const writer = await openWriter(path.join(dir, "app.db"));
    // Generation 1: snapshot at txid 1 (k = 0), commits k = 1..3 as txids 2..4.
    const first = replicatorFor(writer.db, storage);
    await first.start();
    for (let i = 0; i < 3; i++) {
      writer.commit();
      await first.flush();
    }
    await first.stop();
    // A replicator without that cache cannot resume: generation 2 starts with a
    // snapshot at txid 5 (k = 0..3 again), then commits k = 4, 5 as txids 6, 7.
    const second = replicatorFor(writer.db, storage);
    await second.start();
    for (let i = 0; i < 2; i++) {
      writer.commit();
      await second.flush();
    }
    await second.stop();
    writer.close();
    const [g1, g2] = [first.status().generation!, second.status().generation!];
    assert.ok(g1 < g2, "generation ids sort by creation");

    const objects = await storage.list("");
    const bytesOf = (g: string) =>
      objects.filter((o) => o.key.startsWith(`${g}/`)).reduce((n, o) => n + o.size, 0);
    const json = await walship(["generations", "--json", url], { env });
    assert.equal(json.code, 0, json.stderr);
    const gens = JSON.parse(json.stdout);
    assert.deepEqual(
      gens.map((g: Record<string, unknown>) => ({ ...g, created: 0, firstTime: 0, lastTime: 0 })),
      [
        {
          generation: g1,
          created: 0,
          snapshots: 1,
          segments: 3,
          firstTxid: 1,
          lastTxid: 4,
          firstTime: 0,
          lastTime: 0,
          bytes: bytesOf(g1),
        },
        {
          generation: g2,
          created: 0,
          snapshots: 1,
          segments: 2,
          firstTxid: 5,
          lastTxid: 7,
          firstTime: 0,
          lastTime: 0,
          bytes: bytesOf(g2),
        },
      ],
    );
    for (const g of gens) {
      assert.ok(g.created <= g.firstTime && g.firstTime < g.lastTime, JSON.stringify(g));
    }
    assert.ok(gens[0].lastTime < gens[1].firstTime, "generation 2 comes after generation 1");

    const table = await walship(["generations", url], { env });
    assert.equal(table.code, 0, table.stderr);
    const rows = table.stdout.trimEnd().split("\n").map((l) => l.split(/\s{2,}/));
    assert.deepEqual(rows[0], [
      "generation",
      "txids",
      "from",
      "to",
      "snapshots",
      "segments",
      "size",
    ]);
    assert.equal(rows.length, 3);
    assert.deepEqual(rows[1].slice(0, 2).concat(rows[1].slice(4, 6)), [g1, "1..4", "1", "3"]);
    assert.deepEqual(rows[2].slice(0, 2).concat(rows[2].slice(4, 6)), [g2, "5..7", "1", "2"]);
    assert.equal(rows[1][2], new Date(gens[0].firstTime).toISOString());
    assert.equal(rows[2][3], new Date(gens[1].lastTime).toISOString());

    const snapsJson = await walship(["snapshots", "--json", url], { env });
    assert.equal(snapsJson.code, 0, snapsJson.stderr);
    const snaps = JSON.parse(snapsJson.stdout);
    assert.deepEqual(
      snaps.map((
        s: { generation: string; txid: number; key: string },
      ) => [s.generation, s.txid, s.key]),
      objects.filter((o) => o.key.includes("/snapshot-"))
        .map((o) => [o.key.split("/")[0], Number(/\/snapshot-(\d{16})-/.exec(o.key)![1]), o.key])
        .sort(),
    );
    assert.deepEqual(snaps.map((s: { txid: number }) => s.txid), [1, 5]);
    assert.deepEqual(snaps.map((s: { time: number }) => s.time), [
      gens[0].firstTime,
      gens[1].firstTime,
    ]);
    const snapsTable = await walship(["snapshots", url], { env });
    assert.equal(snapsTable.code, 0, snapsTable.stderr);
    const srows = snapsTable.stdout.trimEnd().split("\n").map((l) => l.split(/\s{2,}/));
    assert.deepEqual(srows.map((r) => r.slice(0, 2)), [["generation", "txid"], [g1, "1"], [
      g2,
      "5",
    ]]);

    // What the listings promise is what restore gives.
    const cases: Array<[string[], number, number]> = [
      [[], 7, 5], // latest: generation 2
      [["--txid", "4"], 4, 3], // the end of generation 1
      [["--txid", "5"], 5, 3], // generation 2's snapshot: the same state as txid 4
      [["--generation", g1], 4, 3],
    ];
    for (const [args, txid, k] of cases) {
      const out = path.join(dir, `restored-${args.join("-") || "latest"}.db`);
      const run = await walship(["restore", "--json", "-o", out, ...args, url], { env });
      assert.equal(run.code, 0, run.stderr);
      assert.equal(JSON.parse(run.stdout).txid, txid, args.join(" "));
      assertRestoredK(out, k, args.join(" "));
    }
    assertOneLineError(
      await walship([
        "restore",
        "-o",
        path.join(dir, "none.db"),
        "--generation",
        "20200101T000000000Z-00000000",
        url,
      ], { env }),
      "generation 20200101T000000000Z-00000000 is not in s3://gens/app",
    );
  } finally {
    await s3.close();
    removeTempDirs();
  }
});
