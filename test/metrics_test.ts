/**
 * The Prometheus metrics (src/metrics/): the renderer and the HTTP server.
 *
 * - The rendered text parses line by line with a small strict parser of the
 *   text exposition format 0.0.4 written here: each family has exactly one
 *   HELP and one TYPE line before its samples, its samples are contiguous,
 *   no series repeats, counters end in `_total`, every value parses.
 * - Every family the issue asks for is there with the right labels and the
 *   status's values; label values with `\`, `"` and newlines survive the
 *   round trip.
 * - The server, on this runtime (`node:http` on Deno and on Bun): /metrics
 *   is the renderer's text as `text/plain; version=0.0.4`, /healthz is 200
 *   `ok` when healthy and 503 with one line that names the replica and its
 *   error (masked) or the replicator not started, other paths 404.
 * - A bad address or one in use fails with a one-line WalshipError.
 * - A real Replicator's status() renders, with the values it reports.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { WalshipError } from "../src/errors.ts";
import { type MetricsInput, renderMetrics } from "../src/metrics/prometheus.ts";
import { parseListenAddress, startMetricsServer } from "../src/metrics/server.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { Replicator } from "../src/replicate/replicator.ts";
import { VERSION } from "../src/version.ts";
import { test } from "./_runtime.ts";
import { openRuntimeWriter, runtimeTransaction } from "./_replication_fixtures.ts";
import { prng, withTempDir } from "./_util.ts";

// ---------------------------------------------------------------- a tiny exposition-format parser

interface ParsedFamily {
  name: string;
  help: string | null;
  type: string | null;
  samples: Array<{ labels: Record<string, string>; value: number }>;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Unescapes HELP text: `\\` and `\n` only. */
function unescapeHelp(s: string): string {
  return s.replace(/\\(\\|n)/g, (_m, c) => (c === "n" ? "\n" : "\\"));
}

/** Parses `{a="x",b="y"}` starting at `text[0] === "{"`; returns the labels and the rest of the line. */
function parseLabels(text: string, line: string): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let i = 1;
  for (;;) {
    if (text[i] === "}") return [labels, text.slice(i + 1)];
    const eq = text.indexOf("=", i);
    assert.ok(eq > i, `label without "=": ${line}`);
    const name = text.slice(i, eq);
    assert.match(name, LABEL_NAME, `bad label name in: ${line}`);
    assert.equal(text[eq + 1], '"', `label value not quoted: ${line}`);
    let value = "";
    let j = eq + 2;
    for (;;) {
      const c = text[j];
      assert.ok(c !== undefined, `unterminated label value: ${line}`);
      if (c === "\\") {
        const n = text[j + 1];
        assert.ok(n === "\\" || n === '"' || n === "n", `bad escape \\${n} in: ${line}`);
        value += n === "n" ? "\n" : n;
        j += 2;
      } else if (c === '"') {
        j++;
        break;
      } else {
        assert.notEqual(c, "\n", `raw newline in a label value: ${line}`);
        value += c;
        j++;
      }
    }
    assert.ok(!(name in labels), `label ${name} twice: ${line}`);
    labels[name] = value;
    if (text[j] === ",") j++;
    else assert.equal(text[j], "}", `expected "," or "}" after a label: ${line}`);
    i = j;
  }
}

function parseValue(s: string, line: string): number {
  if (s === "NaN") return NaN;
  if (s === "+Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  assert.match(s, /^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/, `bad value in: ${line}`);
  return Number(s);
}

/**
 * Parses text exposition format 0.0.4 strictly enough to fail on what
 * Prometheus would reject or misread.
 */
function parseExposition(text: string): Map<string, ParsedFamily> {
  assert.ok(text.endsWith("\n"), "the text ends with a newline");
  const families = new Map<string, ParsedFamily>();
  const series = new Set<string>();
  let current: ParsedFamily | null = null;
  const family = (name: string, line: string): ParsedFamily => {
    assert.match(name, NAME, `bad metric name in: ${line}`);
    let f = families.get(name);
    if (!f) {
      f = { name, help: null, type: null, samples: [] };
      families.set(name, f);
    } else {
      assert.equal(current, f, `family ${name} is not contiguous: ${line}`);
    }
    current = f;
    return f;
  };
  for (const line of text.slice(0, -1).split("\n")) {
    assert.notEqual(line, "", "no empty lines");
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) continue; // a plain comment
      const f = family(m[2], line);
      if (m[1] === "HELP") {
        assert.equal(f.help, null, `HELP twice for ${f.name}`);
        assert.equal(f.samples.length, 0, `HELP after samples of ${f.name}`);
        f.help = unescapeHelp(m[3]);
      } else {
        assert.equal(f.type, null, `TYPE twice for ${f.name}`);
        assert.equal(f.samples.length, 0, `TYPE after samples of ${f.name}`);
        assert.match(m[3], /^(counter|gauge|histogram|summary|untyped)$/, `bad TYPE: ${line}`);
        f.type = m[3];
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const f = family(m[1], line);
    let rest = m[2];
    let labels: Record<string, string> = {};
    if (rest.startsWith("{")) [labels, rest] = parseLabels(rest, line);
    const parts = rest.trim().split(/\s+/);
    assert.ok(rest.startsWith(" ") && parts.length >= 1 && parts.length <= 2, `bad sample: ${line}`);
    const value = parseValue(parts[0], line);
    if (parts[1] !== undefined) assert.match(parts[1], /^-?\d+$/, `bad timestamp: ${line}`);
    const id = `${f.name}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!series.has(id), `series twice: ${line}`);
    series.add(id);
    f.samples.push({ labels, value });
  }
  return families;
}

// ---------------------------------------------------------------- statuses

type ReplicaInput = MetricsInput["replicas"][number];

function replicaStatus(replica: string, over: Partial<ReplicaInput> = {}): ReplicaInput {
  return {
    replica,
    uploadedTxid: 40,
    pendingObjects: 2,
    pendingBytes: 8192,
    uploads: 17,
    uploadErrors: 1,
    lastError: null,
    lagSeconds: 1.25,
    ...over,
  };
}

function status(db: string, over: Partial<MetricsInput> = {}): MetricsInput {
  const replicas = over.replicas ?? [replicaStatus("s3://bucket/app")];
  return {
    db,
    generation: "0000000000000001",
    txid: 42,
    uploadedTxid: 40,
    pendingObjects: 2,
    pendingBytes: 8192,
    snapshots: 3,
    segments: 9,
    repairs: 1,
    heals: 2,
    uploadErrors: 1,
    lastError: null,
    pin: "held (READ_LOCK 1)",
    pinned: true,
    walSize: 123456,
    lagSeconds: 1.25,
    started: true,
    replica: replicas[0]?.replica ?? "",
    replicas,
    ...over,
  };
}

const PER_DB: Record<string, [string, (s: MetricsInput) => number]> = {
  walship_txid: ["gauge", (s) => s.txid],
  walship_snapshots_total: ["counter", (s) => s.snapshots],
  walship_segments_total: ["counter", (s) => s.segments],
  walship_heals_total: ["counter", (s) => s.heals],
  walship_repairs_total: ["counter", (s) => s.repairs],
  walship_wal_size_bytes: ["gauge", (s) => s.walSize],
  walship_pinned: ["gauge", (s) => (s.pinned ? 1 : 0)],
};
const PER_REPLICA: Record<string, [string, (r: ReplicaInput) => number]> = {
  walship_replicated_txid: ["gauge", (r) => r.uploadedTxid],
  walship_replication_lag_seconds: ["gauge", (r) => r.lagSeconds],
  walship_pending_bytes: ["gauge", (r) => r.pendingBytes],
  walship_pending_objects: ["gauge", (r) => r.pendingObjects],
  walship_uploads_total: ["counter", (r) => r.uploads],
  walship_upload_errors_total: ["counter", (r) => r.uploadErrors],
};

function sample(f: ParsedFamily | undefined, labels: Record<string, string>): number | undefined {
  return f?.samples.find((s) => JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(Object.entries(labels).sort()))
    ?.value;
}

// ---------------------------------------------------------------- the renderer

test("renderMetrics: every family once with HELP and TYPE, per database and per replica, with the status's values", () => {
  const statuses = [
    status("/srv/a.db", {
      replicas: [
        replicaStatus("s3://bucket/a"),
        replicaStatus("file:///backups/a", { uploadedTxid: 38, lagSeconds: 7.5, uploads: 5, pendingObjects: 4 }),
      ],
    }),
    status("/srv/b.db", { txid: 7, pinned: false, walSize: 0, replicas: [replicaStatus("s3://bucket/b", { uploadedTxid: 7, lagSeconds: 0 })] }),
  ];
  const text = renderMetrics(statuses);
  const families = parseExposition(text);

  for (const f of families.values()) {
    assert.ok(f.name.startsWith("walship_"), f.name);
    assert.ok(f.help && f.help.length > 5, `${f.name} has a HELP text`);
    assert.ok(f.type, `${f.name} has a TYPE`);
    if (f.type === "counter") assert.ok(f.name.endsWith("_total"), `counter ${f.name} ends in _total`);
    assert.equal(text.split("\n").filter((l) => l.startsWith(`# HELP ${f.name} `)).length, 1, `one HELP for ${f.name}`);
    assert.equal(text.split("\n").filter((l) => l.startsWith(`# TYPE ${f.name} `)).length, 1, `one TYPE for ${f.name}`);
  }

  assert.deepEqual(families.get("walship_up")?.samples, [{ labels: {}, value: 1 }]);
  assert.equal(families.get("walship_up")?.type, "gauge");
  assert.deepEqual(families.get("walship_build_info")?.samples, [{ labels: { version: VERSION }, value: 1 }]);

  for (const [name, [type, value]] of Object.entries(PER_DB)) {
    const f = families.get(name);
    assert.ok(f, `family ${name}`);
    assert.equal(f.type, type, `${name} is a ${type}`);
    assert.equal(f.samples.length, statuses.length, `${name}: one sample per database`);
    for (const s of statuses) assert.equal(sample(f, { db: s.db }), value(s), `${name}{db="${s.db}"}`);
  }
  for (const [name, [type, value]] of Object.entries(PER_REPLICA)) {
    const f = families.get(name);
    assert.ok(f, `family ${name}`);
    assert.equal(f.type, type, `${name} is a ${type}`);
    assert.equal(f.samples.length, 3, `${name}: one sample per database and replica`);
    for (const s of statuses) {
      for (const r of s.replicas) {
        assert.equal(sample(f, { db: s.db, replica: r.replica }), value(r), `${name}{db="${s.db}",replica="${r.replica}"}`);
      }
    }
  }
  assert.equal(
    families.size,
    2 + Object.keys(PER_DB).length + Object.keys(PER_REPLICA).length,
    `no other family: ${[...families.keys()].join(", ")}`,
  );
  // Spot-check the literal text of one line as Prometheus would read it.
  assert.ok(text.includes('\nwalship_replication_lag_seconds{db="/srv/a.db",replica="file:///backups/a"} 7.5\n'), text);
  assert.ok(text.includes('\nwalship_pinned{db="/srv/b.db"} 0\n'));
});

test("renderMetrics: label values with backslashes, quotes and newlines are escaped and parse back", () => {
  const db = 'C:\\data\\"quoted"\nnext line\\n.db';
  const replica = 'file:///back\\ups/"x"\n';
  const text = renderMetrics([status(db, { replicas: [replicaStatus(replica)] })]);
  for (const line of text.split("\n")) assert.ok(!line.startsWith("next line"), "no raw newline inside a label");
  assert.ok(text.includes(String.raw`{db="C:\\data\\\"quoted\"\nnext line\\n.db"}`), text);
  const families = parseExposition(text);
  assert.equal(families.get("walship_txid")?.samples[0].labels.db, db);
  assert.deepEqual(families.get("walship_pending_bytes")?.samples[0].labels, { db, replica });
});

test("renderMetrics: no database gives every family's HELP and TYPE, walship_up and build_info only", () => {
  const families = parseExposition(renderMetrics([]));
  assert.equal(families.get("walship_up")?.samples[0].value, 1);
  assert.equal(families.get("walship_build_info")?.samples.length, 1);
  for (const name of [...Object.keys(PER_DB), ...Object.keys(PER_REPLICA)]) {
    assert.deepEqual(families.get(name)?.samples, [], name);
    assert.ok(families.get(name)?.type, name);
  }
});

test("renderMetrics: non-finite and fractional values use the format's spelling", () => {
  const text = renderMetrics([
    status("/a.db", { replicas: [replicaStatus("s3://b/a", { lagSeconds: Infinity }), replicaStatus("s3://b/c", { lagSeconds: NaN })] }),
    status("/b.db", { replicas: [replicaStatus("s3://b/b", { lagSeconds: 0.001 })] }),
  ]);
  assert.ok(text.includes('walship_replication_lag_seconds{db="/a.db",replica="s3://b/a"} +Inf\n'));
  assert.ok(text.includes('walship_replication_lag_seconds{db="/a.db",replica="s3://b/c"} NaN\n'));
  assert.ok(text.includes('walship_replication_lag_seconds{db="/b.db",replica="s3://b/b"} 0.001\n'));
  parseExposition(text);
});

test("renderMetrics: a status without a replicas list stands for its one replica", () => {
  const s = status("/a.db", { replicas: [], replica: "s3://b/only", uploadedTxid: 41, pendingBytes: 5 });
  const families = parseExposition(renderMetrics([s]));
  assert.equal(sample(families.get("walship_replicated_txid"), { db: "/a.db", replica: "s3://b/only" }), 41);
  assert.equal(sample(families.get("walship_pending_bytes"), { db: "/a.db", replica: "s3://b/only" }), 5);
});

// ---------------------------------------------------------------- the server

async function get(port: number, p: string, init: RequestInit = {}): Promise<{ status: number; type: string | null; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${p}`, init);
  return { status: res.status, type: res.headers.get("content-type"), body: await res.text() };
}

test("server: /metrics, /healthz 200 and 503, 404, on this runtime", async () => {
  let statuses: MetricsInput[] = [status("/srv/a.db", { replicas: [replicaStatus("s3://bucket/a", { lastError: null })] })];
  const server = await startMetricsServer(":0", () => statuses);
  try {
    assert.ok(server.port > 0 && server.port < 65536, `a free port was picked: ${server.port}`);

    const m = await get(server.port, "/metrics");
    assert.equal(m.status, 200);
    assert.match(m.type ?? "", /^text\/plain; version=0\.0\.4/);
    assert.equal(m.body, renderMetrics(statuses));
    parseExposition(m.body);
    assert.equal((await get(server.port, "/metrics?x=1")).status, 200, "a query string is ignored");

    const ok = await get(server.port, "/healthz");
    assert.deepEqual([ok.status, ok.body], [200, "ok\n"]);
    assert.match(ok.type ?? "", /^text\/plain/);

    // A replica whose last upload failed: 503 and one line naming it and the error, credentials masked.
    statuses = [
      status("/srv/a.db", {
        replicas: [
          replicaStatus("s3://bucket/a"),
          replicaStatus("s3://bucket/b", {
            lastError: "[PUT] s3://bucket/b/x: endpoint http://127.0.0.1:9 does not answer\n(ECONNREFUSED) https://h/?X-Amz-Signature=abcdef0123&X-Amz-Credential=AKIA/x",
          }),
        ],
      }),
    ];
    const failing = await get(server.port, "/healthz");
    assert.equal(failing.status, 503);
    assert.equal(failing.body.split("\n").length, 2, `one line: ${JSON.stringify(failing.body)}`);
    assert.match(failing.body, /\/srv\/a\.db.*s3:\/\/bucket\/b.*does not answer \(ECONNREFUSED\)/);
    assert.doesNotMatch(failing.body, /s3:\/\/bucket\/a\b/, "the healthy replica is not blamed");
    assert.doesNotMatch(failing.body, /abcdef0123|AKIA/, "signed-URL credentials are masked");
    // Metrics still answer while unhealthy.
    assert.equal((await get(server.port, "/metrics")).status, 200);

    // Not started (waiting for the database, or stopping).
    statuses = [status("/srv/a.db"), status("/srv/late.db", { started: false })];
    const notStarted = await get(server.port, "/healthz");
    assert.equal(notStarted.status, 503);
    assert.match(notStarted.body, /^\/srv\/late\.db: not started/);
    assert.equal(notStarted.body.split("\n").length, 2);

    // Nothing to replicate is not healthy either.
    statuses = [];
    const none = await get(server.port, "/healthz");
    assert.deepEqual([none.status, none.body], [503, "no database is being replicated\n"]);

    // Recovered: healthy again.
    statuses = [status("/srv/a.db")];
    assert.equal((await get(server.port, "/healthz")).status, 200);

    // A source that throws: metrics 500, health 503, one line each.
    const broken = await startMetricsServer("127.0.0.1:0", () => {
      throw new Error("boom\nsecond line");
    });
    try {
      const bm = await get(broken.port, "/metrics");
      assert.deepEqual([bm.status, bm.body], [500, "status unavailable: boom second line\n"]);
      assert.equal((await get(broken.port, "/healthz")).status, 503);
    } finally {
      await broken.close();
    }

    statuses = [status("/srv/a.db")];
    for (const p of ["/", "/metricsx", "/health", "/metrics/extra"]) {
      const r = await get(server.port, p);
      assert.equal(r.status, 404, p);
    }
    const head = await fetch(`http://127.0.0.1:${server.port}/healthz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
    assert.equal((await get(server.port, "/metrics", { method: "POST", body: "x" })).status, 405);
  } finally {
    await server.close();
  }
});

test("server: \":port\" listens on every interface, \"127.0.0.1:port\" on loopback; close() ends kept-alive connections", async () => {
  const all = await startMetricsServer(":0", () => [status("/a.db")]);
  const loop = await startMetricsServer("127.0.0.1:0", () => [status("/a.db")]);
  try {
    assert.equal(all.host, "");
    assert.equal((await get(all.port, "/healthz")).status, 200);
    assert.equal((await fetch(`http://localhost:${all.port}/healthz`)).status, 200);
    assert.equal(loop.host, "127.0.0.1");
    assert.equal((await get(loop.port, "/healthz")).status, 200);
  } finally {
    const t0 = Date.now();
    await all.close();
    await loop.close();
    assert.ok(Date.now() - t0 < 3000, `close() returns promptly (${Date.now() - t0} ms)`);
  }
  await assert.rejects(fetch(`http://127.0.0.1:${all.port}/healthz`), "nothing listens after close()");
  await all.close(); // twice is fine
});

test("server: a bad address throws BAD_ARGUMENT with one line; an address in use too", async () => {
  const cases: Array<[string, RegExp]> = [
    ["", /empty/],
    ["9090", /no host part \(did you mean ":9090"\?\)/],
    ["localhost", /no port/],
    ["localhost:", /no port/],
    [":port", /port "port" is not a number/],
    [":70000", /port 70000 is out of range/],
    ["::1:9090", /IPv6 address needs brackets/],
    ["http://127.0.0.1:9090", /no scheme or path/],
    ["bad_host!:9090", /not host:port|not a host name/],
    [" :9090", /not host:port|not a host name/],
    ["nonexistent.invalid:0", /unknown host/],
  ];
  for (const [addr, re] of cases) {
    const err = await startMetricsServer(addr, () => []).then(
      (s) => {
        void s.close();
        return null;
      },
      (e) => e,
    );
    assert.ok(err instanceof WalshipError, `${JSON.stringify(addr)} is refused (got ${err})`);
    assert.equal(err.code, "BAD_ARGUMENT", addr);
    assert.match(err.message, re, addr);
    assert.ok(!err.message.includes("\n"), `one line: ${err.message}`);
    assert.ok(err.message.startsWith("metrics address "), err.message);
  }
  assert.deepEqual(parseListenAddress(":9090"), { host: "", port: 9090 });
  assert.deepEqual(parseListenAddress("0.0.0.0:0"), { host: "0.0.0.0", port: 0 });
  assert.deepEqual(parseListenAddress("[::1]:9090"), { host: "::1", port: 9090 });
  assert.deepEqual(parseListenAddress("metrics.example.com:80"), { host: "metrics.example.com", port: 80 });

  // In use: another listener holds the port.
  const holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
  const port = (holder.address() as { port: number }).port;
  try {
    const err = await startMetricsServer(`127.0.0.1:${port}`, () => []).then(() => null, (e) => e);
    assert.ok(err instanceof WalshipError, `in use is refused (got ${err})`);
    assert.equal(err.code, "BAD_ARGUMENT");
    assert.equal(err.message, `metrics address "127.0.0.1:${port}": the address is in use by another process: pick another port`);
    assert.equal(err.transient, true);
  } finally {
    await new Promise<void>((resolve) => holder.close(() => resolve()));
  }
});

// ---------------------------------------------------------------- a real replicator

test("a running Replicator's status() renders, and the server reports it healthy", () =>
  withTempDir("metrics-replicator", async (dir) => {
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db);
    const replica = path.join(dir, "replica");
    fs.mkdirSync(replica);
    const r = new Replicator(db, { storage: openReplica(replica), cacheDir: path.join(dir, "cache"), syncInterval: 50 });
    const source = (): MetricsInput[] => [r.status()];
    const server = await startMetricsServer("127.0.0.1:0", source);
    try {
      const before = await get(server.port, "/healthz");
      assert.equal(before.status, 503, "not healthy before start()");
      assert.match(before.body, /not started/);

      await r.start();
      const rand = prng(7);
      for (let k = 1; k <= 20; k++) runtimeTransaction(con, rand, k, []);
      await r.flush();
      const s = r.status();
      const families = parseExposition((await get(server.port, "/metrics")).body);
      assert.equal(sample(families.get("walship_txid"), { db: s.db }), s.txid);
      assert.equal(s.txid, 21);
      assert.equal(sample(families.get("walship_snapshots_total"), { db: s.db }), 1);
      assert.ok(sample(families.get("walship_segments_total"), { db: s.db })! >= 1);
      const labels = { db: s.db, replica: s.replica };
      assert.equal(sample(families.get("walship_replicated_txid"), labels), 21);
      assert.equal(sample(families.get("walship_pending_objects"), labels), 0);
      assert.equal(sample(families.get("walship_upload_errors_total"), labels), 0);
      assert.ok(sample(families.get("walship_uploads_total"), labels)! >= 2, "the snapshot and a segment were uploaded");
      assert.equal(sample(families.get("walship_replication_lag_seconds"), labels), 0, "caught up");
      assert.equal((await get(server.port, "/healthz")).body, "ok\n");
    } finally {
      await r.stop().catch(() => {});
      await server.close();
      con.close();
    }
  }));
