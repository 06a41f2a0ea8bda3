/**
 * Credentials never reach walship's output. The real CLI (a subprocess of
 * this runtime) runs with a distinctive AWS_SECRET_ACCESS_KEY and
 * AWS_SESSION_TOKEN against a real s3rver, at `--log-level debug`, through:
 *
 * - replicate with writes (JSON logs and pretty logs), an S3 outage in the
 *   middle (upload failures, retries, recovery), SIGTERM;
 * - restore (`--json` and plain), generations, snapshots (`--json` and plain);
 * - failures: a wrong access key id (restore, generations, replicate), an
 *   endpoint nobody answers (restore, generations, and replicate buffering
 *   until its shutdown timeout), a missing bucket, and replica URLs carrying
 *   credential-like things (presigned-URL query parameters, user info in the
 *   endpoint or the bucket, a query on a file URL, an endpoint with
 *   credentials from AWS_ENDPOINT_URL_S3).
 *
 * Everything printed on stdout and stderr is collected and searched for the
 * secret key, the session token (whole, their distinctive tails, base64 and
 * URL-encoded), presigned-URL parameters (`X-Amz-Signature=`,
 * `X-Amz-Credential=`, `X-Amz-Security-Token=`) and SigV4 Authorization
 * headers. So that the test can fail, it first proves that the secrets were
 * really in the walship process's environment (/proc/<pid>/environ) and that
 * the SDK really sends the session token with this environment, and that the
 * scanner finds a planted secret. With WALSHIP_LOG_FORMAT=json every log
 * line is a JSON object.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { openReplica } from "../src/replica/open_replica.ts";
import type { S3Storage } from "../src/replica/s3.ts";
import { test } from "./_runtime.ts";
import {
  assertContiguous,
  openRuntimeWriter,
  type Replica,
  runtimeTransaction,
  runWalship,
  startReplicate,
  type WalshipProcess,
} from "./_replication_fixtures.ts";
import { type S3Server, startS3Server } from "./_s3_server.ts";
import { freePort, prng, sleep, waitFor, withTempDir } from "./_util.ts";

const TAIL_SECRET = randomBytes(8).toString("hex");
const TAIL_TOKEN = randomBytes(8).toString("hex");
/** s3rver checks only the access key id; the secret and the token can be anything. */
const SECRET = `SECRETsecret123leak${TAIL_SECRET}`;
const TOKEN = `TOKENsession456leak${TAIL_TOKEN}/+=`;
const SIGNATURE = `5167a7e${randomBytes(8).toString("hex")}`;

/** What no output may contain. */
const NEEDLES: Array<[string, string | RegExp]> = [
  ["the secret key", SECRET],
  ["the secret key's tail", TAIL_SECRET],
  ["the session token", TOKEN],
  ["the session token's tail", TAIL_TOKEN],
  ["the secret key, base64", Buffer.from(SECRET).toString("base64")],
  ["the secret key, URL-encoded", encodeURIComponent(SECRET)],
  ["the session token, URL-encoded", encodeURIComponent(TOKEN)],
  ["a planted signature", SIGNATURE],
  ["a presigned-URL signature", /X-Amz-Signature=/i],
  ["a presigned-URL credential", /X-Amz-Credential=/i],
  ["a presigned-URL session token", /X-Amz-Security-Token=/i],
  ["a SigV4 Authorization header", /AWS4-HMAC-SHA256|Signature=[0-9a-f]{16}/i],
  ["a session-token header", /x-amz-security-token/i],
];

/** Every output the test saw, by what produced it. */
const seen: Array<{ what: string; text: string }> = [];

/** Asserts `text` (the output of `what`) holds none of {@linkcode NEEDLES}. */
function assertNoLeak(what: string, text: string): void {
  for (const [name, needle] of NEEDLES) {
    const at = typeof needle === "string" ? text.indexOf(needle) : text.search(needle);
    if (at >= 0) {
      const line = text.slice(text.lastIndexOf("\n", at) + 1, (text.indexOf("\n", at) + 1 || text.length + 1) - 1);
      assert.fail(`${name} leaked into the output of ${what}:\n${line}`);
    }
  }
}

function record(what: string, run: { stdout: string; stderr: string }): void {
  seen.push({ what: `${what} (stdout)`, text: run.stdout }, { what: `${what} (stderr)`, text: run.stderr });
  assertNoLeak(`${what} (stdout)`, run.stdout);
  assertNoLeak(`${what} (stderr)`, run.stderr);
}

/** Every stderr line is a JSON log object, except CLI's final `walship: ` error line. */
function assertJsonLines(what: string, stderr: string, min = 1): void {
  const lines = stderr.split("\n").filter((l) => l !== "");
  let json = 0;
  for (const [i, line] of lines.entries()) {
    if (i === lines.length - 1 && line.startsWith("walship: ")) continue;
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch {
      assert.fail(`${what}: stderr line ${i + 1} is not JSON:\n${line}`);
    }
    assert.ok(o !== null && typeof o === "object" && !Array.isArray(o), `${what}: line ${i + 1} is a JSON object`);
    const rec = o as Record<string, unknown>;
    assert.equal(typeof rec.message, "string", `${what}: line ${i + 1} has a message: ${line}`);
    assert.match(String(rec.level), /^(DEBUG|INFO|WARN|ERROR)$/i, `${what}: line ${i + 1} has a level: ${line}`);
    json++;
  }
  assert.ok(json >= min, `${what}: at least ${min} JSON log line(s), got ${json}:\n${stderr}`);
}

/** The environment of a running process, from /proc. */
function environOf(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of fs.readFileSync(`/proc/${pid}/environ`, "latin1").split("\0")) {
    const eq = kv.indexOf("=");
    if (eq > 0) out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

function credentials(s3: S3Server): Record<string, string> {
  return { ...s3.env, AWS_SECRET_ACCESS_KEY: SECRET, AWS_SESSION_TOKEN: TOKEN };
}

/** Waits for the replicate process to exit after SIGTERM; its exit code. */
async function terminate(p: WalshipProcess): Promise<number | null> {
  return await p.terminate(60_000);
}

test("the scanner finds a planted secret, token or presigned-URL parameter", () => {
  for (const planted of [SECRET, TOKEN, TAIL_SECRET, `x?X-Amz-Signature=abc`, `x&X-Amz-Credential=S3RVER%2F`]) {
    assert.throws(() => assertNoLeak("a planted line", `a\nlog ${planted} here\nb`), /leaked/);
  }
  assertNoLeak("a clean line", "walship: [GET] s3://b/app: access denied (InvalidAccessKeyId)");
});

test("with these credentials, the SDK sends the session token and signs with the secret (so a leak could happen)", async () => {
  const s3 = await startS3Server({ buckets: ["probe"] });
  try {
    const storage = openReplica(s3.url("probe", "app"), { env: credentials(s3) }) as S3Storage;
    const headers: Array<Record<string, string>> = [];
    storage.client.middlewareStack.add(
      (next) => async (args) => {
        headers.push({ ...(args.request as { headers: Record<string, string> }).headers });
        return await next(args);
      },
      { step: "deserialize", name: "captureHeaders" },
    );
    await storage.put("k", new Uint8Array([1, 2, 3]));
    assert.deepEqual([...(await storage.get("k"))], [1, 2, 3], "s3rver accepts this secret and token");
    storage.close();
    assert.ok(headers.length >= 2);
    assert.equal(headers[0]["x-amz-security-token"], TOKEN, "the session token goes out with every request");
    assert.match(headers[0].authorization, /^AWS4-HMAC-SHA256 Credential=S3RVER\//, "requests are signed");
  } finally {
    await s3.close();
  }
});

test("replicate, restore, generations and snapshots at debug level, with an S3 outage, never print a credential", () =>
  withTempDir("secret-leak", async (dir) => {
    const s3 = await startS3Server({ buckets: ["leak"] });
    const env = credentials(s3);
    const url = s3.url("leak", "app");
    const replica: Replica = { backend: "s3", url, env, storage: openReplica(url, { env }) };
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db);
    const rand = prng(20260101);
    let k = 0;
    const write = (n: number) => {
      for (let i = 0; i < n; i++) runtimeTransaction(con, rand, ++k, []);
    };
    let p: WalshipProcess | undefined;
    try {
      // JSON logs: replicate with writes, an outage while writing, recovery, SIGTERM.
      p = startReplicate(db, { ...replica, env: { ...env, WALSHIP_LOG_FORMAT: "json" } }, {
        extra: ["--log-level", "debug", "--shutdown-timeout", "20s"],
        syncInterval: "100ms",
      });
      await p.waitForLog(/^replicating$/, 60_000);
      // The secrets really are in walship's environment: scanning its output means something.
      const childEnv = environOf(p.child.pid!);
      assert.equal(childEnv.AWS_SECRET_ACCESS_KEY, SECRET, "the secret key reached the walship process");
      assert.equal(childEnv.AWS_SESSION_TOKEN, TOKEN, "the session token reached the walship process");
      write(30);
      await waitFor("the first commits in the replica", async () =>
        ((await assertContiguous(replica).catch(() => []))?.at(-1)?.lastTxid ?? 0) >= 1 + k, 30_000);
      await s3.stop();
      write(30);
      await p.waitForLog(/upload failed|unreachable|retry/i, 30_000);
      await sleep(500);
      await s3.start();
      write(10);
      await waitFor(() => `every commit in the replica after the outage; stderr:\n${p!.stderr}`, async () =>
        ((await assertContiguous(replica).catch(() => []))?.at(-1)?.lastTxid ?? 0) >= 1 + k, 60_000);
      assert.equal(await terminate(p), 0, p.stderr);
      record("replicate (json, with an outage)", p);
      assertJsonLines("replicate (json, with an outage)", p.stderr, 5);
      assert.ok(p.log.some((l) => l.level === "warn"), `the outage was logged at warn:\n${p.stderr}`);

      // Pretty logs: fields are printed inline there.
      p = startReplicate(db, { ...replica, env: { ...env, WALSHIP_LOG_FORMAT: "pretty" } }, {
        extra: ["--log-level", "debug"],
      });
      await waitFor(() => `replicate (pretty) to start; stderr:\n${p!.stderr}`, () => /replicating/.test(p!.stderr), 60_000);
      write(20);
      await sleep(800);
      assert.equal(await terminate(p), 0, p.stderr);
      record("replicate (pretty)", p);
      assert.match(p.stderr, /INFO/, "pretty lines were written");

      // Restore, generations, snapshots.
      const out = path.join(dir, "restored.db");
      const restored = await runWalship(["restore", "-o", out, "--json", url], env);
      record("restore --json", restored);
      assert.equal(restored.code, 0, restored.stderr);
      assert.equal(JSON.parse(restored.stdout).txid, (await assertContiguous(replica)).at(-1)!.lastTxid);
      const plain = await runWalship(["restore", "-o", out, "--force", url], { ...env, WALSHIP_LOG_FORMAT: "json" });
      record("restore", plain);
      assert.equal(plain.code, 0, plain.stderr);
      for (const args of [["generations", url], ["generations", url, "--json"], ["snapshots", url], ["snapshots", url, "--json"]]) {
        const r = await runWalship(args, env);
        record(args.join(" "), r);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(r.stdout.length > 0);
      }
    } finally {
      p?.signal("SIGKILL");
      con.close();
      await s3.close();
    }
  }), { timeout: 240_000 });

test("failures (wrong access key, no endpoint, no bucket, credential-like URLs) never print a credential", () =>
  withTempDir("secret-leak-fail", async (dir) => {
    const s3 = await startS3Server({ buckets: ["fail"] });
    const db = path.join(dir, "app.db");
    const con = await openRuntimeWriter(db);
    runtimeTransaction(con, prng(1), 1, []);
    const out = path.join(dir, "out.db");
    const dead = await freePort();
    const deadEndpoint = `http://127.0.0.1:${dead}`;
    let p: WalshipProcess | undefined;
    try {
      const env = { ...credentials(s3), WALSHIP_LOG_FORMAT: "json", WALSHIP_DEBUG: "1" };
      const url = s3.url("fail", "app");
      const oneLine = (what: string, r: { code: number | null; stdout: string; stderr: string }, re: RegExp) => {
        record(what, r);
        assert.equal(r.code, 1, `${what} exits 1: ${r.stderr}`);
        const lines = r.stderr.split("\n").filter((l) => l !== "");
        assert.match(lines.at(-1) ?? "", re, `${what}: ${r.stderr}`);
      };

      // A wrong access key id, with the distinctive secret and token.
      const wrong = { ...env, AWS_ACCESS_KEY_ID: "AKIAWRONGWRONGWRONG0" };
      const denied = /^walship: .*access denied \(InvalidAccessKeyId\)/;
      oneLine("restore, wrong key", await runWalship(["restore", "-o", out, url], wrong), denied);
      oneLine("generations, wrong key", await runWalship(["generations", url], wrong), denied);
      p = startReplicate(db, { backend: "s3", url, env: wrong, storage: null! }, { extra: ["--log-level", "debug"] });
      const wrongRun = await p.exited;
      oneLine("replicate, wrong key", { code: wrongRun.code, stdout: p.stdout, stderr: p.stderr }, denied);
      assertJsonLines("replicate, wrong key", p.stderr, 0);

      // A missing bucket.
      const noBucket = s3.url("no-such-bucket", "app");
      oneLine("restore, no bucket", await runWalship(["restore", "-o", out, noBucket], env), /does not exist/);
      oneLine("generations, no bucket", await runWalship(["generations", noBucket], env), /does not exist/);

      // An endpoint nobody answers.
      const deadUrl = `s3://fail/app?endpoint=${encodeURIComponent(deadEndpoint)}`;
      oneLine("restore, dead endpoint", await runWalship(["restore", "-o", out, deadUrl], env), /^walship: /);
      oneLine("generations, dead endpoint", await runWalship(["generations", deadUrl], env), /^walship: /);
      // replicate buffers locally and retries at debug level until its shutdown timeout.
      p = startReplicate(db, { backend: "s3", url: deadUrl, env, storage: null! }, {
        extra: ["--log-level", "debug", "--shutdown-timeout", "1s"],
        cacheDir: path.join(dir, "cache-dead"),
      });
      await p.waitForLog(/unreachable|upload failed/i, 60_000);
      runtimeTransaction(con, prng(2), 2, []);
      await sleep(2500);
      assert.equal(await terminate(p), 1, `replicate exits 1 with objects left in the cache:\n${p.stderr}`);
      record("replicate, dead endpoint", p);
      assertJsonLines("replicate, dead endpoint", p.stderr, 3);

      // Replica URLs that carry credential-like things are refused without echoing them.
      const ep = encodeURIComponent(s3.endpoint);
      const badUrls = [
        `s3://fail/app?endpoint=${ep}&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=S3RVER%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=${SIGNATURE}&X-Amz-Security-Token=${encodeURIComponent(TOKEN)}`,
        `s3://fail/app?endpoint=${ep}&aws_secret_access_key=${encodeURIComponent(SECRET)}`,
        `s3://fail/app?endpoint=${encodeURIComponent(`http://S3RVER:${SECRET}@127.0.0.1:${s3.port}`)}`,
        `s3://fail/app?endpoint=http://S3RVER:${SECRET}@127.0.0.1:${s3.port}`,
        `s3://S3RVER:${SECRET}@fail/app`,
        `s3:/fail/app?secret=${SECRET}`,
        `https://S3RVER:${SECRET}@127.0.0.1/fail/app?X-Amz-Signature=${SIGNATURE}`,
        `file://${dir}/replica?token=${encodeURIComponent(TOKEN)}`,
      ];
      for (const bad of badUrls) {
        for (const args of [["generations", bad], ["restore", "-o", out, bad], ["replicate", db, bad, "--log-level", "debug"]]) {
          const r = await runWalship(args, env);
          oneLine(`${args[0]} ${bad.slice(0, 40)}…`, r, /^walship: bad replica URL /);
        }
      }
      // Credentials in the endpoint from the environment.
      const envEndpoint = { ...env, AWS_ENDPOINT_URL_S3: `http://S3RVER:${SECRET}@127.0.0.1:${s3.port}` };
      oneLine("generations, endpoint with credentials from the environment", await runWalship(["generations", "s3://fail/app"], envEndpoint), /endpoint must not hold credentials/);
    } finally {
      p?.signal("SIGKILL");
      con.close();
      await s3.close();
    }
  }), { timeout: 240_000 });

// Kept apart from the cases above: a URL's fragment is echoed in the BAD_URL message
// (src/replica/url.ts, bad()), so this one fails until that message drops the fragment too.
test("a replica URL whose fragment holds a secret is refused without echoing the fragment", async () => {
  for (const bad of [`s3://fail/app#${SECRET}`, `s3://fail/app?endpoint=http://127.0.0.1:1#${SECRET}`, `file:///tmp/x#${SECRET}`]) {
    const r = await runWalship(["generations", bad], { AWS_SECRET_ACCESS_KEY: SECRET });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^walship: bad replica URL /);
    assertNoLeak(`generations ${bad.slice(0, 20)}…#…`, r.stdout + r.stderr);
  }
});

test("nothing any run printed holds a credential (all outputs, together)", () => {
  assert.ok(seen.length > 20, `the runs above were recorded (${seen.length})`);
  for (const { what, text } of seen) assertNoLeak(what, text);
  if (process.env.WALSHIP_TEST_ECHO) for (const { what, text } of seen) console.error(`== ${what}\n${text}`);
});
