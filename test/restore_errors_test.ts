/**
 * Damaged replicas (DESIGN.md invariant 6): a flipped byte, a truncated or
 * missing object, a segment swapped for another valid one, a damaged
 * snapshot, on a real s3rver and on a directory. Each makes `walship
 * restore` exit 1 with one line naming the object (or, for a gap, the
 * missing txids), writes no output and leaves no temporary file, and keeps
 * an existing output (and its -wal and -shm) as it was even with --force;
 * --if-replica-exists, which is for an empty replica, never hides damage.
 * States that do not need the damaged object still restore, exactly.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { openReplica } from "../src/replica/open_replica.ts";
import {
  assertOneLineError,
  assertRestoredK,
  buildReplica,
  type BuiltReplica,
  copyReplica,
  listDir,
  rawS3,
  SECRET,
  sha256,
  walship,
} from "./_restore_fixtures.ts";
import { type S3Server, startS3Server } from "./_s3_server.ts";
import { test } from "./_runtime.ts";
import { sqlite3 } from "./_wal_fixtures.ts";
import { removeTempDirs, tempDir } from "./_util.ts";

/** Commits after the snapshot: txids 1 (snapshot, k = 0) .. COMMITS + 1. */
const COMMITS = 6;
const HASH = 32;

/** Raw access to a replica's objects, around walship. */
interface Tamper {
  read(key: string): Promise<Uint8Array>;
  write(key: string, bytes: Uint8Array): Promise<void>;
  remove(key: string): Promise<void>;
}

interface Damage {
  name: string;
  /** Damages the replica; returns what the error line must contain. */
  apply(t: Tamper, r: BuiltReplica): Promise<Array<string | RegExp>>;
  /** The highest txid that must still restore (null: nothing can). */
  intactUpTo: number | null;
}

const flip = (bytes: Uint8Array, at: number) => {
  const out = bytes.slice();
  out[at] ^= 0x01;
  return out;
};
const seg = (r: BuiltReplica, txid: number) => r.segments.get(txid)!;

const DAMAGES: Damage[] = [
  {
    name: "a byte flipped in a segment's payload",
    intactUpTo: 3,
    async apply(t, r) {
      const b = await t.read(seg(r, 4));
      await t.write(seg(r, 4), flip(b, b.length - HASH - 3));
      return [seg(r, 4), "failed its hash check"];
    },
  },
  {
    name: "a byte flipped in a segment's metadata",
    intactUpTo: 3,
    async apply(t, r) {
      const b = await t.read(seg(r, 4));
      await t.write(seg(r, 4), flip(b, 40));
      return [seg(r, 4)];
    },
  },
  {
    name: "a byte flipped in the last segment's hash",
    intactUpTo: COMMITS,
    async apply(t, r) {
      const key = seg(r, COMMITS + 1);
      const b = await t.read(key);
      await t.write(key, flip(b, b.length - 1));
      return [key, "failed its hash check"];
    },
  },
  {
    name: "a segment truncated to half",
    intactUpTo: 3,
    async apply(t, r) {
      const b = await t.read(seg(r, 4));
      await t.write(seg(r, 4), b.subarray(0, b.length >> 1));
      return [seg(r, 4), /truncated|hash check/];
    },
  },
  {
    name: "a segment cut short by one byte",
    intactUpTo: 3,
    async apply(t, r) {
      const b = await t.read(seg(r, 4));
      await t.write(seg(r, 4), b.subarray(0, b.length - 1));
      return [seg(r, 4), /truncated|hash check/];
    },
  },
  {
    name: "a segment in the middle deleted (a gap)",
    intactUpTo: 3,
    async apply(t, r) {
      await t.remove(seg(r, 4));
      return [`generation ${r.generation} misses transactions 4..4`];
    },
  },
  {
    name: "a segment replaced by another valid segment's bytes",
    intactUpTo: 3,
    async apply(t, r) {
      await t.write(seg(r, 4), await t.read(seg(r, 5)));
      return [seg(r, 4), "does not hold the segment its name says"];
    },
  },
  {
    name: "a byte flipped in the snapshot's payload",
    intactUpTo: null,
    async apply(t, r) {
      const b = await t.read(r.snapshotKey);
      await t.write(r.snapshotKey, flip(b, b.length - HASH - 20));
      return [r.snapshotKey, /corrupted|hash check/];
    },
  },
  {
    name: "a byte flipped in the snapshot's metadata",
    intactUpTo: null,
    async apply(t, r) {
      const b = await t.read(r.snapshotKey);
      await t.write(r.snapshotKey, flip(b, 40));
      return [r.snapshotKey];
    },
  },
  {
    name: "the snapshot deleted",
    intactUpTo: null,
    async apply(t, r) {
      await t.remove(r.snapshotKey);
      return ["holds no complete generation (no snapshot)"];
    },
  },
  {
    name: "the snapshot truncated",
    intactUpTo: null,
    async apply(t, r) {
      const b = await t.read(r.snapshotKey);
      await t.write(r.snapshotKey, b.subarray(0, b.length - 40));
      return [r.snapshotKey, /truncated|corrupted|hash check/];
    },
  },
];

/** An existing output with -wal and -shm beside it, which a failed restore must leave as they are. */
function existingOutput(dir: string): { out: string; before: Record<string, string> } {
  const out = path.join(dir, "restored.db");
  sqlite3(out, "CREATE TABLE keep(x); INSERT INTO keep VALUES ('precious');");
  fs.writeFileSync(`${out}-wal`, "not a wal, but mine");
  fs.writeFileSync(`${out}-shm`, "not a shm, but mine");
  const before: Record<string, string> = {};
  for (const name of listDir(dir)) before[name] = sha256(path.join(dir, name));
  return { out, before };
}

/** Every way a damaged replica must behave. */
async function checkDamaged(
  url: string,
  env: Record<string, string>,
  patterns: Array<string | RegExp>,
  d: Damage,
) {
  // No output yet: none afterwards, and nothing left beside it.
  const fresh = tempDir("damaged-out");
  const out = path.join(fresh, "restored.db");
  assertOneLineError(await walship(["restore", "-o", out, url], { env }), ...patterns);
  assert.deepEqual(listDir(fresh), [], "nothing may be left in the output directory");
  // A damaged replica is not an empty one: --if-replica-exists must not hide it.
  assertOneLineError(
    await walship(["restore", "--if-replica-exists", "-o", out, url], { env }),
    ...patterns,
  );
  assert.deepEqual(listDir(fresh), []);

  // An existing output, even with --force, stays as it was, with its -wal and -shm.
  const kept = tempDir("damaged-existing");
  const existing = existingOutput(kept);
  assertOneLineError(
    await walship(["restore", "--force", "-o", existing.out, url], { env }),
    ...patterns,
  );
  const after: Record<string, string> = {};
  for (const name of listDir(kept)) after[name] = sha256(path.join(kept, name));
  assert.deepEqual(after, existing.before, "the existing output must be untouched");
  assert.equal(sqlite3(existing.out, "SELECT x FROM keep;").trim(), "precious");

  // A state before the damage does not need the damaged object.
  if (d.intactUpTo !== null) {
    const ok = path.join(fresh, `txid-${d.intactUpTo}.db`);
    const run = await walship(["restore", "-o", ok, "--txid", String(d.intactUpTo), url], { env });
    assert.equal(run.code, 0, `--txid ${d.intactUpTo} must still restore: ${run.stderr}`);
    assertRestoredK(ok, d.intactUpTo - 1);
  }
}

test("damaged file replica: one line naming the object, no output, existing output untouched", async () => {
  try {
    const pristine = tempDir("damaged-file");
    const built = await buildReplica(
      pristine,
      openReplica(path.join(pristine, "replica")),
      COMMITS,
    );
    for (const [i, d] of DAMAGES.entries()) {
      const dir = path.join(pristine, `case-${i}`);
      fs.cpSync(path.join(pristine, "replica"), dir, { recursive: true });
      const at = (key: string) => path.join(dir, ...key.split("/"));
      const tamper: Tamper = {
        read: (key) => fsp.readFile(at(key)).then((b) => new Uint8Array(b)),
        write: (key, bytes) => fsp.writeFile(at(key), bytes),
        remove: (key) => fsp.rm(at(key)),
      };
      const patterns = await d.apply(tamper, built);
      await checkDamaged(`file://${dir}`, {}, patterns, d).catch((err) => {
        throw new Error(`file, ${d.name}: ${(err as Error).message}`, { cause: err });
      });
    }
  } finally {
    removeTempDirs();
  }
});

test("damaged S3 replica: one line naming the object, no output, existing output untouched", async () => {
  const s3: S3Server = await startS3Server({ buckets: ["dmg"] });
  const raw: S3Client = rawS3(s3.endpoint);
  try {
    const dir = tempDir("damaged-s3");
    const pristine = openReplica(s3.url("dmg", "pristine"), { env: s3.env });
    const built = await buildReplica(dir, pristine, COMMITS);
    const env = { ...s3.env, AWS_SECRET_ACCESS_KEY: SECRET };
    for (const [i, d] of DAMAGES.entries()) {
      const prefix = `case-${i}`;
      await copyReplica(pristine, openReplica(s3.url("dmg", prefix), { env: s3.env }));
      const Bucket = "dmg";
      const tamper: Tamper = {
        async read(key) {
          const res = await raw.send(new GetObjectCommand({ Bucket, Key: `${prefix}/${key}` }));
          return await res.Body!.transformToByteArray();
        },
        async write(key, bytes) {
          await raw.send(new PutObjectCommand({ Bucket, Key: `${prefix}/${key}`, Body: bytes }));
        },
        async remove(key) {
          await raw.send(new DeleteObjectCommand({ Bucket, Key: `${prefix}/${key}` }));
        },
      };
      const patterns = await d.apply(tamper, built);
      await checkDamaged(s3.url("dmg", prefix), env, patterns, d).catch((err) => {
        throw new Error(`s3, ${d.name}: ${(err as Error).message}`, { cause: err });
      });
    }
  } finally {
    raw.destroy();
    await s3.close();
    removeTempDirs();
  }
});
