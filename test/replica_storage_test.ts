/**
 * One behaviour suite for every ReplicaStorage backend, run against a real
 * s3rver (fresh bucket per test) and a fresh temporary directory, followed by
 * the failures only one backend can have (credentials, outages, a parent
 * that is a file).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { WalshipError } from "../src/errors.ts";
import { FileStorage } from "../src/replica/file.ts";
import { openReplica } from "../src/replica/open_replica.ts";
import { S3Storage } from "../src/replica/s3.ts";
import { parseReplicaUrl, type S3ReplicaUrl } from "../src/replica/url.ts";
import type { ReplicaStorage } from "../src/replica/storage.ts";
import { type S3Server, startS3Server } from "./_s3_server.ts";
import { test } from "./_runtime.ts";
import { freePort, portAnswers, removeTempDirs, tempDir } from "./_util.ts";

const MiB = 1024 * 1024;

let shared: Promise<S3Server> | undefined;
const s3 = () => (shared ??= startS3Server());

interface Backend {
  name: "s3" | "file";
  /** A fresh, empty place; `at(prefix)` opens a replica at that prefix inside it. */
  fresh(): Promise<{ at(prefix: string, listPageSize?: number): ReplicaStorage }>;
  /** LIST requests one `list()` of `n` objects costs at this page size. */
  listRequests(n: number, pageSize: number): number;
}

let bucketCount = 0;
const backends: Backend[] = [
  {
    name: "s3",
    async fresh() {
      const server = await s3();
      const bucket = `walship-${++bucketCount}-${randomBytes(4).toString("hex")}`;
      await server.createBucket(bucket);
      return {
        at: (prefix, listPageSize) =>
          openReplica(server.url(bucket, prefix), { env: server.env, listPageSize }),
      };
    },
    listRequests: (n, pageSize) => Math.max(1, Math.ceil(n / pageSize)),
  },
  {
    name: "file",
    fresh() {
      const dir = tempDir("storage-test");
      return Promise.resolve({ at: (prefix: string) => openReplica(join(dir, prefix)) });
    },
    listRequests: () => 1,
  },
];

/** Names of the SDK commands an S3Storage sends from now on (empty for other backends). */
function recordCommands(storage: ReplicaStorage): string[] {
  const names: string[] = [];
  if (storage instanceof S3Storage) {
    // deno-lint-ignore no-explicit-any
    storage.client.middlewareStack.add((next: any, context: any) => (args: any) => {
      names.push(String(context.commandName));
      return next(args);
    }, { step: "initialize" });
  }
  return names;
}

async function rejects(
  promise: Promise<unknown>,
  code: WalshipError["code"],
): Promise<WalshipError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof WalshipError, `expected WalshipError ${code}, got ${err}`);
    assert.equal(err.code, code, err.message);
    assert.ok(!err.message.includes("\n"), `one line: ${err.message}`);
    return err;
  }
  assert.fail(`expected WalshipError ${code}, but it succeeded`);
}

async function collect(
  chunks: AsyncIterable<Uint8Array>,
): Promise<{ bytes: Uint8Array; count: number }> {
  const parts: Uint8Array[] = [];
  for await (const chunk of chunks) parts.push(chunk);
  return { bytes: new Uint8Array(Buffer.concat(parts)), count: parts.length };
}

const text = (s: string) => new TextEncoder().encode(s);
const keysOf = (infos: { key: string }[]) => infos.map((i) => i.key);

for (const b of backends) {
  test(`${b.name}: put/get round-trips empty, small and binary bodies and counts them`, async () => {
    const storage = (await b.fresh()).at("replica/db");
    const bodies: Record<string, Uint8Array> = {
      "a/empty": new Uint8Array(0),
      "a/small": text("hello, replica"),
      "a/binary": new Uint8Array(randomBytes(65_537)),
    };
    for (const [key, body] of Object.entries(bodies)) await storage.put(key, body);
    for (const [key, body] of Object.entries(bodies)) {
      assert.deepEqual(await storage.get(key), body, key);
    }
    const total = 14 + 65_537;
    assert.deepEqual(storage.stats, {
      puts: 3,
      gets: 3,
      lists: 0,
      deletes: 0,
      bytesUp: total,
      bytesDown: total,
    });
  });

  test(`${b.name}: location names the replica without secrets or query`, async () => {
    const storage = (await b.fresh()).at("replica/db");
    if (b.name === "s3") {
      assert.match(storage.location, /^s3:\/\/walship-\d+-[0-9a-f]{8}\/replica\/db$/);
    } else {assert.match(
        storage.location,
        /^file:\/\/\/.*\/walship-storage-test-[^/]+\/replica\/db$/,
      );}
  });

  test(`${b.name}: overwrite replaces the whole object`, async () => {
    const storage = (await b.fresh()).at("r");
    await storage.put("k", new Uint8Array(randomBytes(10_000)));
    await storage.put("k", text("short"));
    assert.deepEqual(await storage.get("k"), text("short"));
    assert.deepEqual(keysOf(await storage.list("")), ["k"]);
  });

  test(`${b.name}: a 20 MiB+ file body round-trips through get and getStream`, async () => {
    const storage = (await b.fresh()).at("r");
    const commands = recordCommands(storage);
    const data = new Uint8Array(randomBytes(20 * MiB + 12_345));
    const path = join(tempDir("storage-test"), "snapshot");
    writeFileSync(path, data);
    await storage.put("gen/snapshot", { path, size: data.length });
    const got = await storage.get("gen/snapshot");
    assert.equal(got.length, data.length);
    assert.ok(Buffer.compare(got, data) === 0, "get returns the exact bytes");
    const streamed = await collect(await storage.getStream("gen/snapshot"));
    assert.equal(streamed.bytes.length, data.length);
    assert.ok(Buffer.compare(streamed.bytes, data) === 0, "getStream reassembles the exact bytes");
    assert.ok(streamed.count > 1, `streamed in several chunks (${streamed.count})`);
    assert.equal(storage.stats.bytesUp, data.length);
    assert.equal(storage.stats.bytesDown, 2 * data.length);
    if (b.name === "s3") {
      // Below the multipart threshold (256 MiB): one PUT, streamed from the file.
      assert.deepEqual(commands.filter((c) => c !== "GetObjectCommand"), ["PutObjectCommand"]);
    }
  });

  test(`${b.name}: a file body of several MiB comes back exact, whatever its size around a read chunk`, async () => {
    const storage = (await b.fresh()).at("r");
    const dir = tempDir("storage-test");
    for (const size of [0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 3 * MiB + 17]) {
      const data = new Uint8Array(randomBytes(size));
      writeFileSync(join(dir, `f${size}`), data);
      await storage.put(`k${size}`, { path: join(dir, `f${size}`), size });
      assert.ok(Buffer.from(await storage.get(`k${size}`)).equals(data), `${size} bytes`);
    }
  });

  test(`${b.name}: a file body stores exactly its declared size`, async () => {
    const storage = (await b.fresh()).at("r");
    const data = new Uint8Array(randomBytes(5_000));
    const path = join(tempDir("storage-test"), "grown");
    writeFileSync(path, data);
    await storage.put("k", { path, size: 1_000 });
    assert.deepEqual(await storage.get("k"), data.subarray(0, 1_000));
  });

  test(`${b.name}: file bodies put one after another, then at the same time, each store their own bytes`, async () => {
    // S3 reads a file body into one buffer that puts share while it is free: concurrent and
    // successive puts of other sizes must never see each other's bytes.
    const storage = (await b.fresh()).at("r");
    const dir = tempDir("storage-test");
    const sizes = [3 * MiB + 7, 1_000, 2 * MiB, 10, 3 * MiB + 7];
    const bodies = sizes.map((n, i) => {
      const data = new Uint8Array(randomBytes(n));
      writeFileSync(join(dir, `f${i}`), data);
      return data;
    });
    for (const [i, size] of sizes.entries()) await storage.put(`s${i}`, { path: join(dir, `f${i}`), size });
    await Promise.all(sizes.map((size, i) => storage.put(`c${i}`, { path: join(dir, `f${i}`), size })));
    for (const [i, data] of bodies.entries()) {
      assert.ok(Buffer.from(await storage.get(`c${i}`)).equals(data), `concurrent put ${i}`);
      assert.ok(Buffer.from(await storage.get(`s${i}`)).equals(data), `successive put ${i}`);
    }
  });

  test(`${b.name}: a file shorter than its declared size fails and stores nothing`, async () => {
    const storage = (await b.fresh()).at("r");
    const commands = recordCommands(storage);
    const dir = tempDir("storage-test");
    writeFileSync(join(dir, "small"), new Uint8Array(100));
    const small = await rejects(
      storage.put("small", { path: join(dir, "small"), size: 200 }),
      "IO",
    );
    assert.match(small.message, /^\[PUT\] .*\/r\/small: /);
    const bigPath = join(dir, "big");
    writeFileSync(bigPath, new Uint8Array(17 * MiB));
    const big = await rejects(storage.put("big", { path: bigPath, size: 33 * MiB }), "IO");
    assert.match(big.message, /big holds 17825792 bytes, expected 34603008$/);
    await rejects(storage.get("small"), "NOT_FOUND");
    await rejects(storage.get("big"), "NOT_FOUND");
    assert.deepEqual(await storage.list(""), []);
    assert.equal(storage.stats.puts, 0);
    if (b.name === "s3") {
      assert.deepEqual(commands, ["GetObjectCommand", "GetObjectCommand", "ListObjectsV2Command"], "no PUT was sent");
    } else {assert.deepEqual(
        readdirSync(fileURLToPath(storage.location), { recursive: true }),
        [],
        "no temp files left",
      );}
  });

  test(`${b.name}: list is sorted, filtered by prefix and startAfter, with sizes`, async () => {
    const storage = (await b.fresh()).at("replica");
    const keys = [
      "seg/0010",
      "seg-index",
      "seg/0001",
      "segx/1",
      "a/b/c/d",
      "seg/0002",
      "snap/0001/db",
    ];
    for (const [i, key] of keys.entries()) await storage.put(key, new Uint8Array(i));
    const sorted = [...keys].sort();
    assert.deepEqual(keysOf(await storage.list("")), sorted);
    assert.deepEqual(await storage.list("seg/"), [
      { key: "seg/0001", size: 2 },
      { key: "seg/0002", size: 5 },
      { key: "seg/0010", size: 0 },
    ]);
    // "-" sorts before "/": S3 order is byte order, not directory order.
    assert.deepEqual(keysOf(await storage.list("seg")), [
      "seg-index",
      "seg/0001",
      "seg/0002",
      "seg/0010",
      "segx/1",
    ]);
    assert.deepEqual(keysOf(await storage.list("seg/", { startAfter: "seg/0001" })), [
      "seg/0002",
      "seg/0010",
    ]);
    assert.deepEqual(keysOf(await storage.list("", { startAfter: "seg/0010" })), [
      "segx/1",
      "snap/0001/db",
    ]);
    assert.deepEqual(await storage.list("nothing/"), []);
  });

  test(`${b.name}: list gathers every page`, async () => {
    const place = await b.fresh();
    const storage = place.at("replica", 2);
    const keys = Array.from({ length: 7 }, (_, i) => `seg/${String(7 - i).padStart(4, "0")}`);
    for (const key of keys) await storage.put(key, text(key));
    const before = storage.stats.lists;
    assert.deepEqual(keysOf(await storage.list("seg/")), [...keys].sort());
    assert.equal(storage.stats.lists - before, b.listRequests(7, 2));
    assert.deepEqual(keysOf(await storage.list("seg/", { startAfter: "seg/0003" })), [
      "seg/0004",
      "seg/0005",
      "seg/0006",
      "seg/0007",
    ]);
  });

  test(`${b.name}: listChildren names the next path segment, however deep its objects`, async () => {
    const storage = (await b.fresh()).at("replica", 2);
    for (
      const key of ["gens/01/snap", "gens/02/seg/0001", "gens/03/a/b/c", "gens/index", "other/x"]
    ) {
      await storage.put(key, text(key));
    }
    assert.deepEqual(await storage.listChildren("gens/"), ["01", "02", "03"]);
    assert.deepEqual(await storage.listChildren(""), ["gens", "other"]);
    assert.deepEqual(await storage.listChildren("gens/02/"), ["seg"]);
    assert.deepEqual(await storage.listChildren("none/"), []);
    await rejects(storage.listChildren("gens"), "BAD_ARGUMENT");
  });

  test(`${b.name}: prefixes keep replicas apart`, async () => {
    const place = await b.fresh();
    await place.at("a").put("x", text("in a"));
    await place.at("a2").put("x", text("in a2"));
    assert.deepEqual(keysOf(await place.at("a").list("")), ["x"]);
    assert.deepEqual(keysOf(await place.at("").list("")), ["a/x", "a2/x"]);
    assert.deepEqual(await place.at("a2").get("x"), text("in a2"));
  });

  test(`${b.name}: delete removes the keys, ignores absent ones, and empties children`, async () => {
    const storage = (await b.fresh()).at("replica");
    for (const key of ["g/1/a", "g/1/b", "g/2/a", "g/2/b", "g/3/a"]) {
      await storage.put(key, text(key));
    }
    await storage.delete(["g/1/a", "g/1/b", "g/2/a", "g/9/absent"]);
    assert.deepEqual(keysOf(await storage.list("")), ["g/2/b", "g/3/a"]);
    assert.deepEqual(await storage.listChildren("g/"), ["2", "3"]);
    await rejects(storage.get("g/1/a"), "NOT_FOUND");
    assert.equal(storage.stats.deletes, 4);
  });

  test(`${b.name}: delete of more than 1000 keys goes in batches`, async () => {
    const storage = (await b.fresh()).at("replica");
    const commands = recordCommands(storage);
    const keys = Array.from({ length: 1_003 }, (_, i) => `k/${String(i).padStart(5, "0")}`);
    for (let i = 0; i < keys.length; i += 50) {
      await Promise.all(keys.slice(i, i + 50).map((k) => storage.put(k, new Uint8Array(1))));
    }
    await storage.put("keep", text("kept"));
    await storage.delete(keys);
    assert.deepEqual(keysOf(await storage.list("")), ["keep"]);
    if (b.name === "s3") {
      assert.equal(commands.filter((c) => c === "DeleteObjectsCommand").length, 2);
    }
  });

  test(`${b.name}: a missing key is NOT_FOUND from get and getStream, naming the object`, async () => {
    const storage = (await b.fresh()).at("replica");
    const err = await rejects(storage.get("gen/missing"), "NOT_FOUND");
    assert.equal(err.message, `[GET] ${storage.location}/gen/missing: no such object`);
    assert.equal(err.transient, false);
    await rejects(storage.getStream("gen/missing"), "NOT_FOUND");
    assert.equal(storage.stats.gets, 0);
  });
}

// ---- S3 only: credentials, buckets and outages against the real server ----

/** An S3 replica in a fresh bucket whose file bodies above `multipartThreshold` go up as multipart. */
async function multipartStorage(multipartThreshold: number): Promise<S3Storage> {
  const server = await s3();
  const bucket = `walship-mp-${++bucketCount}-${randomBytes(4).toString("hex")}`;
  await server.createBucket(bucket);
  return new S3Storage(parseReplicaUrl(server.url(bucket, "r"), server.env) as S3ReplicaUrl, { env: server.env, multipartThreshold });
}

test("s3: a file body above the multipart threshold goes up in 16 MiB parts, streamed, and comes back exact", async () => {
  const storage = await multipartStorage(8 * MiB);
  const commands = recordCommands(storage);
  const data = new Uint8Array(randomBytes(40 * MiB + 5));
  const path = join(tempDir("storage-test"), "snapshot");
  writeFileSync(path, data);
  await storage.put("gen/snapshot", { path, size: data.length });
  assert.deepEqual(commands, [
    "CreateMultipartUploadCommand",
    "UploadPartCommand",
    "UploadPartCommand",
    "UploadPartCommand",
    "CompleteMultipartUploadCommand",
  ]);
  assert.ok(Buffer.from(await storage.get("gen/snapshot")).equals(data), "the parts joined are the file");
  assert.equal(storage.stats.puts, 1);
  storage.close();
});

test("s3: a multipart upload whose file runs out is aborted, fails IO and stores nothing", async () => {
  const storage = await multipartStorage(8 * MiB);
  const commands = recordCommands(storage);
  const path = join(tempDir("storage-test"), "short");
  // The first part can be read, the second cannot.
  writeFileSync(path, new Uint8Array(17 * MiB));
  const err = await rejects(storage.put("big", { path, size: 32 * MiB }), "IO");
  assert.match(err.message, /^\[PUT\] .*\/r\/big: .*short holds 17825792 bytes, expected 33554432$/);
  assert.ok(commands.includes("AbortMultipartUploadCommand"), commands.join());
  assert.ok(!commands.includes("CompleteMultipartUploadCommand"), commands.join());
  await rejects(storage.get("big"), "NOT_FOUND");
  assert.deepEqual(await storage.list(""), []);
  assert.equal(storage.stats.puts, 0);
  storage.close();
});

test("s3: wrong credentials give ACCESS_DENIED without the secret in the message", async () => {
  const server = await s3();
  const bucket = "walship-creds";
  await server.createBucket(bucket);
  const url = server.url(bucket, "p");
  const wrongId = {
    ...server.env,
    AWS_ACCESS_KEY_ID: "AKIAWRONGKEY12345678",
    AWS_SECRET_ACCESS_KEY: "wrong-secret-Zk93Lq",
  };
  const badKey = await rejects(
    openReplica(url, { env: wrongId }).put("k", text("x")),
    "ACCESS_DENIED",
  );
  assert.equal(
    badKey.message,
    `[PUT] s3://${bucket}/p/k: access denied (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY`,
  );
  // s3rver checks the key id but not SigV4 signatures, so a wrong secret alone
  // cannot be tested here; the key id is what it rejects, on every operation.
  const badList = await rejects(openReplica(url, { env: wrongId }).list(""), "ACCESS_DENIED");
  assert.match(
    badList.message,
    /^\[LIST\] s3:\/\/walship-creds\/p: access denied \(InvalidAccessKeyId\)/,
  );
  for (const err of [badKey, badList]) {
    assert.ok(!/wrong-secret|AKIAWRONG|X-Amz-Signature=[^*]/.test(err.message), err.message);
    assert.ok(err.cause !== undefined, "the SDK error is kept as cause");
  }
});

test("s3: a missing bucket gives NO_BUCKET on put, get and list", async () => {
  const server = await s3();
  const storage = openReplica(server.url("walship-no-such-bucket", "p"), { env: server.env });
  const put = await rejects(storage.put("k", text("x")), "NO_BUCKET");
  assert.equal(
    put.message,
    `[PUT] s3://walship-no-such-bucket/p/k: bucket "walship-no-such-bucket" does not exist: create it or fix the replica URL`,
  );
  await rejects(storage.get("k"), "NO_BUCKET");
  await rejects(storage.list(""), "NO_BUCKET");
});

test("s3: an unreachable endpoint gives UNREACHABLE (transient) within a few seconds", async () => {
  const port = await freePort();
  const env = {
    AWS_ACCESS_KEY_ID: "S3RVER",
    AWS_SECRET_ACCESS_KEY: "S3RVER",
    AWS_REGION: "us-east-1",
  };
  const storage = openReplica(`s3://b/p?endpoint=http://127.0.0.1:${port}`, { env });
  const started = Date.now();
  const err = await rejects(storage.put("k", text("x")), "UNREACHABLE");
  assert.ok(Date.now() - started < 5_000, `failed after ${Date.now() - started} ms`);
  assert.equal(err.transient, true);
  assert.match(
    err.message,
    new RegExp(`^\\[PUT\\] s3://b/p/k: cannot reach http://127.0.0.1:${port} \\(`),
  );
});

test("s3: during an outage operations fail UNREACHABLE, after restart the data is intact", async () => {
  const server = await startS3Server({ buckets: ["walship-outage"] });
  try {
    const storage = openReplica(server.url("walship-outage", "db"), { env: server.env });
    await storage.put("seg/0001", text("before the outage"));
    await server.stop();
    const started = Date.now();
    const getErr = await rejects(storage.get("seg/0001"), "UNREACHABLE");
    assert.equal(getErr.transient, true);
    const putErr = await rejects(storage.put("seg/0002", text("lost?")), "UNREACHABLE");
    assert.equal(putErr.transient, true);
    assert.ok(Date.now() - started < 10_000, `outage errors took ${Date.now() - started} ms`);
    await server.start();
    assert.deepEqual(await storage.get("seg/0001"), text("before the outage"));
    await storage.put("seg/0002", text("after the outage"));
    assert.deepEqual(keysOf(await storage.list("seg/")), ["seg/0001", "seg/0002"]);
  } finally {
    await server.close();
  }
});

// ---- file only ----

test("file: a replica below a regular file fails with a one-line IO error naming the path", async () => {
  const dir = tempDir("storage-test");
  writeFileSync(join(dir, "file.txt"), "not a directory");
  const storage = new FileStorage(join(dir, "file.txt", "sub"));
  const err = await rejects(storage.put("seg/0001", text("x")), "IO");
  assert.equal(
    err.message.replace(/ \(.*\)$/, ""),
    `[PUT] ${storage.location}/seg/0001: a parent of this path is not a directory`,
  );
  assert.ok(err.message.includes(join(dir, "file.txt")), err.message);
  assert.equal(storage.stats.puts, 0);
});

test("file: puts leave no temp files, and leftover temp files are not listed", async () => {
  const dir = tempDir("storage-test");
  const storage = new FileStorage(dir);
  await storage.put("seg/0001", text("one"));
  await storage.put("seg/0001", text("two"));
  assert.deepEqual(readdirSync(join(dir, "seg")), ["0001"]);
  mkdirSync(join(dir, "crash"));
  writeFileSync(join(dir, "seg", "0002.tmp-0123456789abcdef"), "torn");
  writeFileSync(join(dir, "crash", "0001.tmp-fedcba9876543210"), "torn");
  assert.deepEqual(await storage.list(""), [{ key: "seg/0001", size: 3 }]);
  assert.deepEqual(await storage.listChildren(""), ["seg"]);
});

test("teardown: the shared S3 server stops and its port closes", async () => {
  if (shared) {
    const server = await shared;
    await server.close();
    assert.equal(await portAnswers(server.port), false);
  }
  removeTempDirs();
});
