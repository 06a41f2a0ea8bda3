/**
 * `walship replicate` driven by a Litestream-style config file (found through
 * $WALSHIP_CONFIG): two databases, one with an S3 and a directory replica,
 * credentials from `${VAR}`, `/metrics` and `/healthz` on `addr` under load
 * and through an S3 outage; then `walship restore` by database path. And
 * `--exec`: the child's exit code comes back, SIGINT/SIGTERM reach it, and
 * everything it committed is shipped before walship exits.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { openSqlite, test } from "./_runtime.ts";
import {
  assertSameFile,
  closeSharedS3,
  PythonWriter,
  restoreTo,
  runWalship,
  sharedS3,
  testSeed,
  WalshipProcess,
  workloadState,
} from "./_replication_fixtures.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { freePort, waitFor, withTempDir } from "./_util.ts";

/** Values of a metric family by label set, from Prometheus text. */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) out.set(m[2] ?? "", Number(m[3]));
  }
  return out;
}

async function get(url: string): Promise<{ status: number; text: string }> {
  const res = await fetch(url);
  return { status: res.status, text: await res.text() };
}

test("config: two databases, S3 + directory replicas, metrics and health under load and an outage, restore by db path", async () => {
  const s3 = await sharedS3();
  await s3.createBucket("cfg");
  await withTempDir("config-cli", async (dir) => {
    const a = path.join(dir, "a.db");
    const b = path.join(dir, "b.db");
    const port = await freePort();
    const file = path.join(dir, "walship.yml");
    fs.writeFileSync(
      file,
      `# a Litestream config, as it would be carried over
addr: 127.0.0.1:${port}
access-key-id: \${TEST_S3_KEY}
secret-access-key: \${TEST_S3_SECRET}
dbs:
  - path: ${a}
    monitor-interval: 1s
    replicas:
      - name: s3
        type: s3
        bucket: cfg
        path: a
        endpoint: ${s3.endpoint}
        region: us-east-1
        force-path-style: true
        sync-interval: 100ms
      - name: local
        type: file
        path: ${path.join(dir, "rep-a")}
  - path: ${b}
    replicas:
      - url: ${pathToFileURL(path.join(dir, "rep-b")).href}
        sync-interval: 100ms
`,
    );
    const env = { WALSHIP_CONFIG: file, TEST_S3_KEY: s3.env.AWS_ACCESS_KEY_ID, TEST_S3_SECRET: s3.env.AWS_SECRET_ACCESS_KEY };
    const seed = testSeed();
    const wa = await PythonWriter.start(a, { seed, maxTransactions: 400, sleepMs: [2, 8], gate: true });
    const wb = await PythonWriter.start(b, { seed: seed + 1, maxTransactions: 100, sleepMs: [2, 8], gate: true });
    const p = new WalshipProcess(["replicate"], env);
    try {
      await waitFor("both databases replicating", () => p.log.filter((l) => l.message === "replicating").length === 2);
      assert.ok(p.log.some((l) => l.level === "warn" && l.message.endsWith("dbs[0].monitor-interval is ignored: walship watches the WAL for changes")));
      wa.go();
      wb.go();
      const metrics = `http://127.0.0.1:${port}/metrics`;
      const health = `http://127.0.0.1:${port}/healthz`;
      await wa.waitForCommits(50);
      // Under load: txids move, one replicated_txid series per replica.
      const first = samples((await get(metrics)).text, "walship_txid").get(`{db="${a}"}`)!;
      await wa.waitForCommits(120);
      const text = (await get(metrics)).text;
      const later = samples(text, "walship_txid").get(`{db="${a}"}`)!;
      assert.ok(later > first && first > 1, `walship_txid grows under load: ${first} → ${later}`);
      const replicated = samples(text, "walship_replicated_txid");
      assert.deepEqual([...replicated.keys()].filter((k) => k.includes(`db="${a}"`)).sort(), [
        `{db="${a}",replica="file://${path.join(dir, "rep-a")}"}`,
        `{db="${a}",replica="s3://cfg/a"}`,
      ]);
      assert.ok(samples(text, "walship_snapshots_total").get(`{db="${b}"}`)! >= 1);
      assert.equal((await get(health)).status, 200);

      // An outage of S3: health says which replica fails; the directory replica keeps up.
      await s3.stop();
      const down = await waitFor("/healthz to report the failing replica", async () => {
        const h = await get(health);
        return h.status === 503 ? h : null;
      });
      assert.match(down.text, new RegExp(`s3://cfg/a`));
      const during = (await get(metrics)).text;
      assert.ok(samples(during, "walship_upload_errors_total").get(`{db="${a}",replica="s3://cfg/a"}`)! >= 1);
      assert.ok(samples(during, "walship_pending_objects").get(`{db="${a}",replica="s3://cfg/a"}`)! >= 1);
      await s3.start();
      const doneA = await wa.done();
      const doneB = await wb.done();
      await waitFor("/healthz to recover", async () => (await get(health)).status === 200);
      assert.equal(await p.terminate(), 0, p.stderr);
      assert.equal(p.log.filter((l) => l.message === "stopped").length, 2);

      // Restore by database path: the config names the replicas; each holds everything.
      const out = path.join(dir, "restored-a.db");
      const r = await runWalship(["restore", "-o", out, a], env);
      assert.equal(r.code, 0, r.stderr);
      assertSameFile(out, a);
      assert.equal((await workloadState(out)).k, doneA.commits);
      for (const name of ["s3", "local"]) {
        const one = path.join(dir, `restored-a-${name}.db`);
        const rr = await runWalship(["restore", "-o", one, "--replica", name, a], env);
        assert.equal(rr.code, 0, rr.stderr);
        assertSameFile(one, a, `restored from replica ${name}`);
      }
      const outB = path.join(dir, "restored-b.db");
      const rb = await runWalship(["restore", "-o", outB, "--config", file, b], {});
      assert.equal(rb.code, 0, rb.stderr);
      assertSameFile(outB, b);
      assert.equal((await workloadState(outB)).k, doneB.commits);
      const missing = await runWalship(["restore", "-o", path.join(dir, "x.db"), "--config", file, path.join(dir, "c.db")], {});
      assert.equal(missing.code, 1);
      assert.equal(missing.stderr.trim(), `walship: ${path.join(dir, "c.db")} is not among the databases in ${file}`);
    } finally {
      p.signal("SIGKILL");
      await wa.close().catch(() => wa.dispose());
      await wb.close().catch(() => wb.dispose());
    }
  });
}, { timeout: 180_000 });

// A child app: commits N rows (one per transaction), then exits with CODE; on
// SIGINT/SIGTERM it commits a last row naming the signal and exits with 40 + signum.
const APP = String.raw`
import signal, sqlite3, sys, time
db, n, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
def bye(signum, frame):
    con.execute("INSERT INTO t(v) VALUES (?)", ("got signal %d" % signum,))
    con.close()
    sys.exit(40 + signum)
signal.signal(signal.SIGINT, bye)
signal.signal(signal.SIGTERM, bye)
for i in range(n):
    con.execute("INSERT INTO t(v) VALUES (?)", ("row %d" % i,))
print("WROTE", flush=True)
if code < 0:
    while True: time.sleep(0.05)
con.close()
sys.exit(code)
`;

async function rows(db: string): Promise<string[]> {
  const con = await openSqlite(db);
  try {
    return con.all<{ v: string }>("SELECT v FROM t ORDER BY id").map((r) => r.v);
  } finally {
    con.close();
  }
}

test("--exec: walship exits with the child's code after shipping everything it committed", async () => {
  await withTempDir("exec-code", async (dir) => {
    const db = path.join(dir, "app.db");
    const script = path.join(dir, "app.py");
    fs.writeFileSync(script, APP);
    // The database must exist in WAL mode before replication starts; the app then runs as the child.
    spawnSync("sqlite3", [db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"]);
    const url = pathToFileURL(path.join(dir, "replica")).href;
    const p = new WalshipProcess(["replicate", db, url, "--sync-interval", "1h", "--exec", `python3 '${script}' ${db} 200 3`]);
    const { code } = await p.exited;
    assert.equal(code, 3, p.stderr);
    assert.match(p.stdout, /WROTE/, "the child shares walship's stdout");
    const out = path.join(dir, "restored.db");
    await restoreTo({ backend: "file", url, env: {}, storage: openReplica(url) }, out);
    assert.equal((await rows(out)).length, 200, "every commit, shipped at exit despite the 1 h sync interval");

    const missing = new WalshipProcess(["replicate", db, url, "--exec", "no-such-command-walship --x"]);
    assert.equal((await missing.exited).code, 127, "a command that cannot start: 127, as shells say");
    assert.ok(missing.log.some((l) => l.message === "--exec: cannot start no-such-command-walship: command not found"), missing.stderr);
    const unclosed = new WalshipProcess(["replicate", db, url, "--exec", "python3 'oops"]);
    assert.equal((await unclosed.exited).code, 1);
    assert.equal(unclosed.stderr.trim(), `walship: --exec: unclosed ' quote in "python3 'oops"`);
  });
}, { timeout: 120_000 });

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  test(`--exec: ${sig} goes to the child; its last commit is shipped and its exit code returned`, async () => {
    await withTempDir("exec-signal", async (dir) => {
      const db = path.join(dir, "app.db");
      const script = path.join(dir, "app.py");
      fs.writeFileSync(script, APP);
        spawnSync("sqlite3", [db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"]);
      const url = pathToFileURL(path.join(dir, "replica")).href;
      const p = new WalshipProcess(["replicate", db, url, "--sync-interval", "1h", "--exec", `python3 ${script} ${db} 50 -1`]);
      await waitFor("the child to write", () => p.stdout.includes("WROTE"));
      p.signal(sig);
      const { code } = await p.exited;
      const signum = sig === "SIGTERM" ? 15 : 2;
      assert.equal(code, 40 + signum, p.stderr);
      assert.ok(p.log.some((l) => l.message === `${sig}: passing it to the child (pid ${l.message.match(/\d+/)?.[0]})`));
      const out = path.join(dir, "restored.db");
      await restoreTo({ backend: "file", url, env: {}, storage: openReplica(url) }, out);
      const got = await rows(out);
      assert.equal(got.length, 51);
      assert.equal(got.at(-1), `got signal ${signum}`, "the commit the child made on the signal is in the replica");
    });
  }, { timeout: 120_000 });
}

test("teardown: the shared S3 server stops", async () => {
  await closeSharedS3();
});
