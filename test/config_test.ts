/**
 * The config file: Litestream's own examples parse into the replicas walship
 * opens; `$VAR`/`${VAR}` expand; unknown and Litestream-only keys give one
 * warning each naming them; bad files fail with one line naming the file.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { configPath, expandEnv, findDbConfig, loadConfig, parseConfig } from "../src/config/config.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { parseReplicaUrl } from "../src/replica/url.ts";
import { test } from "./_runtime.ts";
import { withTempDir } from "./_util.ts";

const FILE = "/etc/walship.yml";
const ENV = { HOME: "/home/app", BUCKET: "my-bucket", KEY: "AKIAEXAMPLE", SECRET: "s3cr3t/value" };

test("config: Litestream's documented shapes parse into replica URLs", () => {
  const c = parseConfig(
    `
access-key-id: \${KEY}
secret-access-key: $SECRET
addr: ":9090"
dbs:
  - path: /var/lib/db1
    replicas:
      - url: s3://mybkt.litestream.io/db1
  - path: /var/lib/db2
    replicas:
      - path: /backup/db2
      - url: s3://mybkt/db2
        sync-interval: 10s
        snapshot-interval: 1h
        retention: 72h
  - path: ~/db3.db
    replicas:
      - name: minio
        type: s3
        bucket: \${BUCKET}
        path: app/db3
        endpoint: http://127.0.0.1:9000
        region: eu-west-1
        force-path-style: true
        access-key-id: OTHERKEY
        secret-access-key: othersecret
      - type: file
        path: ./backups/db3
`,
    FILE,
    { env: ENV },
  );
  assert.deepEqual(c.warnings, []);
  assert.equal(c.addr, ":9090");
  assert.deepEqual(c.dbs.map((d) => d.path), ["/var/lib/db1", "/var/lib/db2", "/home/app/db3.db"]);
  const urls = c.dbs.map((d) => d.replicas.map((r) => r.url));
  assert.deepEqual(urls, [
    ["s3://mybkt.litestream.io/db1"],
    ["/backup/db2", "s3://mybkt/db2"],
    ["s3://my-bucket/app/db3?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1&force-path-style=true", "/etc/backups/db3"],
  ]);
  const minio = parseReplicaUrl(urls[2][0], {});
  assert.deepEqual(minio, {
    kind: "s3",
    bucket: "my-bucket",
    prefix: "app/db3",
    endpoint: "http://127.0.0.1:9000",
    region: "eu-west-1",
    forcePathStyle: true,
  });
  // Credentials: the replica's own, else the file's global ones, in the env the storage is opened with.
  assert.equal(c.dbs[0].replicas[0].env.AWS_ACCESS_KEY_ID, "AKIAEXAMPLE");
  assert.equal(c.dbs[0].replicas[0].env.AWS_SECRET_ACCESS_KEY, "s3cr3t/value");
  assert.equal(c.dbs[2].replicas[0].env.AWS_ACCESS_KEY_ID, "OTHERKEY");
  assert.equal(c.dbs[2].replicas[0].name, "minio");
  assert.equal(c.dbs[1].replicas[1].syncInterval, 10_000);
  assert.equal(c.dbs[1].replicas[1].snapshotInterval, 3_600_000);
  assert.equal(c.dbs[1].replicas[1].retention, 72 * 3_600_000);
  // The URL walship opens never carries the credentials.
  for (const d of c.dbs) for (const r of d.replicas) assert.doesNotMatch(r.url, /s3cr3t|othersecret/);
  assert.equal(openReplica(urls[2][0], { env: c.dbs[2].replicas[0].env }).location, "s3://my-bucket/app/db3");
});

test("config: Litestream's variables for credentials, and the singular replica: key", () => {
  const c = parseConfig("dbs:\n  - path: /d.db\n    replica:\n      url: s3://b/d\n", FILE, {
    env: { LITESTREAM_ACCESS_KEY_ID: "LK", LITESTREAM_SECRET_ACCESS_KEY: "LS" },
  });
  assert.equal(c.dbs[0].replicas[0].url, "s3://b/d");
  assert.equal(c.dbs[0].replicas[0].env.AWS_ACCESS_KEY_ID, "LK");
  assert.equal(c.dbs[0].replicas[0].env.AWS_SECRET_ACCESS_KEY, "LS");
});

test("config: unknown keys and Litestream-only keys give one warning each, naming them", () => {
  const c = parseConfig(
    `
logging:
  level: debug
  type: json
colour: blue
dbs:
  - path: /d.db
    monitor-interval: 1s
    checkpoint-interval: 1m
    replicas:
      - url: file:///backups/d
        validation-interval: 6h
        bogus: 1
`,
    FILE,
    { env: {} },
  );
  assert.equal(c.logLevel, "debug");
  assert.deepEqual(c.warnings, [
    "config /etc/walship.yml: unknown key colour (ignored)",
    "config /etc/walship.yml: logging.type is ignored: logs are JSON lines, or readable lines on a terminal (WALSHIP_LOG_FORMAT=json|pretty)",
    "config /etc/walship.yml: dbs[0].monitor-interval is ignored: walship watches the WAL for changes",
    "config /etc/walship.yml: dbs[0].checkpoint-interval is ignored: walship never checkpoints; the application's SQLite does",
    "config /etc/walship.yml: dbs[0].replicas[0].validation-interval is ignored: every object carries a SHA-256 checked on restore",
    "config /etc/walship.yml: unknown key dbs[0].replicas[0].bogus (ignored)",
  ]);
});

test("config: expansion of $VAR and ${VAR}, unset ones empty, and --no-expand-env", () => {
  assert.equal(expandEnv("a ${A} $B ${C}-$ 5$", { A: "1", B: "2" }), "a 1 2 -$ 5$");
  const raw = parseConfig("dbs:\n  - path: /d.db\n    replicas:\n      - path: /b/$NAME\n", FILE, {
    env: { NAME: "x" },
    expandEnv: false,
  });
  assert.equal(raw.dbs[0].replicas[0].url, "/b/$NAME");
});

test("config: bad files fail with one line naming the file and the problem", () => {
  const cases: Array<[string, string]> = [
    ["", "config /etc/walship.yml: empty: list databases under dbs:"],
    ["dbs: [", "config /etc/walship.yml: not valid YAML: "],
    ["- a\n- b\n", "config /etc/walship.yml: the top level must be a mapping with dbs:"],
    ["addr: ':9090'\n", "config /etc/walship.yml: no databases: list them under dbs:"],
    ["dbs:\n  - replicas: [{url: s3://b/x}]\n", "config /etc/walship.yml: dbs[0] has no path"],
    ["dbs:\n  - path: /d.db\n", "config /etc/walship.yml: dbs[0] (/d.db) has no replicas"],
    [
      "dbs:\n  - path: /d.db\n    replicas: [{type: gcs, bucket: b}]\n",
      'config /etc/walship.yml: dbs[0].replicas[0]: replica type "gcs" is not supported (use s3 or file)',
    ],
    [
      "dbs:\n  - path: /d.db\n    replicas: [{url: s3://b/x}]\n  - path: /d.db\n    replicas: [{url: s3://b/y}]\n",
      "config /etc/walship.yml: /d.db is listed twice",
    ],
    [
      "dbs:\n  - path: /d.db\n    replicas: [{url: s3://b/x, sync-interval: soon}]\n",
      'dbs[0].replicas[0].sync-interval in /etc/walship.yml "soon" is not a duration: use e.g. 100ms, 1s, 5m, 24h',
    ],
    [
      "dbs:\n  - path: /d.db\n    replicas: [{type: s3, path: x}]\n",
      "config /etc/walship.yml: dbs[0].replicas[0]: an s3 replica needs bucket:",
    ],
    ["logging: {level: loud}\ndbs: []\n", 'config /etc/walship.yml: logging.level "loud": use debug, info, warn or error'],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseConfig(text, FILE, { env: {} }), (err: Error) => {
      assert.ok(err.message.startsWith(message), `${JSON.stringify(text)}: got "${err.message}"`);
      assert.doesNotMatch(err.message, /\n/);
      return true;
    });
  }
});

test("config: which file, and finding a database in it", async () => {
  assert.deepEqual(configPath(undefined, {}), { file: "/etc/walship.yml", named: false });
  assert.deepEqual(configPath(undefined, { WALSHIP_CONFIG: "/srv/w.yml" }), { file: "/srv/w.yml", named: true });
  assert.deepEqual(configPath("/x/y.yml", { WALSHIP_CONFIG: "/srv/w.yml" }), { file: "/x/y.yml", named: true });
  await withTempDir("config", (dir) => {
    const file = path.join(dir, "w.yml");
    assert.throws(() => loadConfig(file), { message: `cannot read config ${file}: no such file` });
    fs.writeFileSync(file, "dbs:\n  - path: app.db\n    replicas:\n      - path: backups\n");
    const found = findDbConfig(path.join(dir, "app.db"), file);
    assert.equal(found?.db.replicas[0].url, path.join(dir, "backups"), "relative paths are relative to the file");
    assert.equal(findDbConfig(path.join(dir, "other.db"), file), null);
  });
});
