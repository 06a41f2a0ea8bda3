/**
 * Bad input at the command line: wrong credentials, an endpoint nobody
 * answers, a missing bucket, an output that cannot be written, malformed
 * replica URLs, files that are not WAL-mode SQLite databases. Each fails
 * with exit 1 and one line that says what was wrong, with no stack trace and
 * never the secret key. Replicate refuses permanent errors at start, but an
 * unreachable replica only makes it warn and buffer locally until the
 * server appears, then everything reaches the replica.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { openReplica } from "../src/replica/open_replica.ts";
import { describeGenerations } from "../src/restore/describe.ts";
import {
  assertOneLineError,
  assertRestoredK,
  buildReplica,
  listDir,
  openWriter,
  SECRET,
  startWalship,
  walship,
} from "./_restore_fixtures.ts";
import { type S3Server, startS3Server } from "./_s3_server.ts";
import { test } from "./_runtime.ts";
import { freePort, removeTempDirs, tempDir, waitFor } from "./_util.ts";

/** A database written and closed by Python's sqlite3, in the given journal mode. */
function pythonDb(file: string, journalMode: "wal" | "delete"): void {
  const script = `
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode=${journalMode}")
con.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
con.execute("INSERT INTO t VALUES (0, 'python')")
con.close()
`;
  const r = spawnSync("python3", ["-c", script, file], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

test("wrong credentials: restore, generations and replicate exit 1 with one line about the access key", async () => {
  const s3 = await startS3Server({ buckets: ["creds"] });
  try {
    const dir = tempDir("creds");
    await buildReplica(dir, openReplica(s3.url("creds", "app"), { env: s3.env }), 1);
    const env = { ...s3.env, AWS_ACCESS_KEY_ID: "wrong", AWS_SECRET_ACCESS_KEY: SECRET };
    const url = s3.url("creds", "app");
    const denied =
      /access denied \(InvalidAccessKeyId\): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/;

    const out = path.join(dir, "out", "restored.db");
    fs.mkdirSync(path.dirname(out));
    assertOneLineError(
      await walship(["restore", "-o", out, url], { env }),
      "s3://creds/app",
      denied,
    );
    assert.deepEqual(listDir(path.dirname(out)), []);

    assertOneLineError(await walship(["generations", url], { env }), denied);

    const db = path.join(dir, "py.db");
    pythonDb(db, "wal");
    const t0 = Date.now();
    const run = await walship(["replicate", db, url, "--cache-dir", path.join(dir, "cache")], {
      env,
      timeoutMs: 30_000,
    });
    assertOneLineError(run, denied);
    assert.ok(
      Date.now() - t0 < 20_000,
      "replicate gives up at start, it does not retry a permanent error",
    );
    // Nothing went up with the right credentials either.
    assert.deepEqual(
      (await describeGenerations(openReplica(url, { env: s3.env }))).map((g) => g.lastTxid),
      [2],
      "only the first replica's generation",
    );
  } finally {
    await s3.close();
    removeTempDirs();
  }
});

test("replicate with the replica unreachable keeps running, caches locally, and uploads when the server appears", async () => {
  const port = await freePort();
  const dir = tempDir("late-server");
  const cache = path.join(dir, "cache");
  const writer = await openWriter(path.join(dir, "app.db"));
  const url = `s3://late/app?endpoint=${encodeURIComponent(`http://127.0.0.1:${port}`)}`;
  const env = {
    AWS_ACCESS_KEY_ID: "S3RVER",
    AWS_SECRET_ACCESS_KEY: SECRET,
    AWS_REGION: "us-east-1",
  };
  const rep = startWalship(
    [
      "replicate",
      writer.db,
      url,
      "--sync-interval",
      "100ms",
      "--cache-dir",
      cache,
      "--log-level",
      "info",
    ],
    env,
  );
  let s3: S3Server | undefined;
  try {
    await waitFor(
      "the unreachable warning",
      () => /unreachable at start, buffering locally/.test(rep.stderr),
    );
    // Started (its snapshot, txid 1, holds k = 0): commits from here on are txids 2, 3, ...
    await waitFor("replication to start", () => /"message":"replicating"/.test(rep.stderr));
    for (let i = 0; i < 3; i++) {
      writer.commit();
      await new Promise((r) => setTimeout(r, 150));
    }
    // Snapshot and segments wait, durable, in the cache; the process lives on.
    const objects = path.join(cache, "objects");
    await waitFor(
      "objects in the cache",
      () => fs.existsSync(objects) && listDir(objects).length >= 2,
    );
    const journal = fs.readFileSync(path.join(cache, "journal"), "utf8");
    assert.match(journal, /"kind":"snapshot"/);
    assert.match(journal, /"kind":"segment"/);
    assert.doesNotMatch(journal, /"t":"uploaded"/, "nothing can have been uploaded yet");
    assert.ok(
      rep.running(),
      `replicate must keep running while the replica is down:\n${rep.stderr}`,
    );
    assert.match(rep.stderr, /cannot reach http:\/\/127\.0\.0\.1:\d+ \(/);

    // The server appears on that port: everything cached goes up, and replication goes on.
    s3 = await startS3Server({ port, buckets: ["late"] });
    await waitFor("the cache to drain", () => listDir(objects).length === 0, 30_000);
    writer.commit(); // k = 4
    const storage = openReplica(url, { env: s3.env });
    await waitFor(
      "txid 5 in the replica",
      async () => (await describeGenerations(storage)).at(-1)?.lastTxid === 5,
      30_000,
    );
    const out = path.join(dir, "restored.db");
    const restored = await walship(["restore", "-o", out, url], { env });
    assert.equal(restored.code, 0, restored.stderr);
    assertRestoredK(out, 4);

    rep.signal("SIGTERM");
    assert.equal(await rep.exited, 0, rep.stderr);
    assert.match(rep.stderr, /replica reachable again after/);
    assert.ok(!rep.stderr.includes(SECRET), "the secret key leaked into the log");
    assert.equal((await describeGenerations(storage)).length, 1, "one generation throughout");
  } finally {
    rep.signal("SIGKILL");
    await rep.exited;
    writer.close();
    await s3?.close();
    removeTempDirs();
  }
});

test("restore from an endpoint nobody answers fails within seconds, naming it", async () => {
  const port = await freePort();
  const dir = tempDir("unreachable");
  const out = path.join(dir, "restored.db");
  const env = { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: SECRET };
  const t0 = Date.now();
  const run = await walship(
    ["restore", "-o", out, `s3://b/app?endpoint=http://127.0.0.1:${port}`],
    { env },
  );
  const took = Date.now() - t0;
  assertOneLineError(
    run,
    `[LIST] s3://b/app: cannot reach http://127.0.0.1:${port} (`,
    "check the endpoint",
  );
  assert.ok(took < 10_000, `took ${took} ms`);
  assert.deepEqual(listDir(dir), []);
  removeTempDirs();
});

test("a missing bucket fails restore, generations and replicate with one line naming it", async () => {
  const s3 = await startS3Server({ buckets: ["present"] });
  try {
    const dir = tempDir("no-bucket");
    const env = { ...s3.env, AWS_SECRET_ACCESS_KEY: SECRET };
    const url = s3.url("absent-bucket", "app");
    const says = `bucket "absent-bucket" does not exist: create it or fix the replica URL`;
    assertOneLineError(
      await walship(["restore", "-o", path.join(dir, "r.db"), url], { env }),
      says,
    );
    assertOneLineError(await walship(["snapshots", url], { env }), says);
    const db = path.join(dir, "py.db");
    pythonDb(db, "wal");
    assertOneLineError(
      await walship(["replicate", db, url, "--cache-dir", path.join(dir, "cache")], {
        env,
        timeoutMs: 30_000,
      }),
      says,
    );
    assert.deepEqual(listDir(dir).filter((n) => n.endsWith(".db")), ["py.db"]);
  } finally {
    await s3.close();
    removeTempDirs();
  }
});

test("an output under a regular file cannot be written: one line, nothing created", async () => {
  const dir = tempDir("unwritable");
  const replica = path.join(dir, "replica");
  await buildReplica(dir, openReplica(replica), 2);
  const blocker = path.join(dir, "plain-file");
  fs.writeFileSync(blocker, "I am a file, not a directory");
  const out = path.join(blocker, "sub", "out.db");
  const run = await walship(["restore", "-o", out, replica], {
    env: { AWS_SECRET_ACCESS_KEY: SECRET },
  });
  assertOneLineError(run, `cannot write ${out}`, /not a directory|no such file/);
  assert.equal(fs.readFileSync(blocker, "utf8"), "I am a file, not a directory");
  assert.ok(!listDir(dir).some((n) => n.includes(".tmp-")));
  removeTempDirs();
});

test("malformed replica URLs: one line saying what is wrong, secrets in the URL never shown", async () => {
  const dir = tempDir("bad-url");
  const db = path.join(dir, "py.db");
  pythonDb(db, "wal");
  const env = { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: SECRET };
  const cases: Array<[string, string]> = [
    ["gs://x", `bad replica URL "gs://x": unknown scheme "gs:"`],
    ["s3://", `bad replica URL "s3://": no bucket`],
    ["s3:///prefix", `bad replica URL "s3:///prefix": no bucket`],
    [
      `s3://me:${SECRET}@bucket/app`,
      `bad replica URL "s3://…@bucket/app": "…@" is not a bucket name`,
    ],
    [
      `s3://b/app?endpoint=http://me:${SECRET}@127.0.0.1:9`,
      `bad replica URL "s3://b/app?…": endpoint must not hold credentials`,
    ],
    ["s3://b/app?colour=blue", `unknown parameter "colour"`],
  ];
  for (const [url, says] of cases) {
    const out = path.join(dir, "r.db");
    assertOneLineError(
      await walship(["restore", "-o", out, url], { env }),
      says,
      "expected s3://bucket",
    );
    assert.ok(!fs.existsSync(out));
  }
  // The same check guards every command that takes a URL.
  assertOneLineError(await walship(["generations", "gs://x"], { env }), `unknown scheme "gs:"`);
  assertOneLineError(await walship(["replicate", db, "s3:///prefix"], { env }), "no bucket");
  assert.ok(!fs.existsSync(path.join(dir, ".py.db-walship")), "no cache created for a bad URL");
  removeTempDirs();
});

test("replicate refuses a file that is not SQLite, and a database not in WAL mode, with one line", async () => {
  const dir = tempDir("not-sqlite");
  const replica = path.join(dir, "replica");
  const env = { AWS_SECRET_ACCESS_KEY: SECRET };

  const text = path.join(dir, "notes.txt");
  fs.writeFileSync(text, "these are my notes, not a database\n".repeat(200));
  assertOneLineError(
    await walship(["replicate", text, replica], { env }),
    `${text} is not a SQLite database`,
  );
  const short = path.join(dir, "short.db");
  fs.writeFileSync(short, "tiny");
  assertOneLineError(
    await walship(["replicate", short, replica], { env }),
    `${short} is not a SQLite database`,
  );

  const rollback = path.join(dir, "rollback.db");
  pythonDb(rollback, "delete");
  assertOneLineError(
    await walship(["replicate", rollback, replica], { env }),
    `${rollback} uses a rollback journal, not WAL`,
    `PRAGMA journal_mode=WAL`,
  );
  assert.ok(!fs.existsSync(replica), "nothing was written to the replica");
  removeTempDirs();
});
