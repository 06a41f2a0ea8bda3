/**
 * `walship inspect`, run three ways: in-process through runCli, as a
 * subprocess of the current runtime, and as the compiled dist/walship. Each
 * prints exactly the documented object for what the writer did, exits 0 for
 * a rollback-journal database, and refuses a file that is not SQLite with
 * one line on stderr.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { cli, type CliRun, walship } from "./_restore_fixtures.ts";
import { runtimeName, test } from "./_runtime.ts";
import {
  DB_NAME,
  randomBytes,
  readDbFiles,
  runSession,
  sqlite3,
  sqliteView,
  standardSteps,
  u32be,
  u32le,
} from "./_wal_fixtures.ts";
import { prng, ROOT, withTempDir } from "./_util.ts";

const BINARY = path.join(ROOT, "dist", "walship");
const PAGE = 4096;

type Way = (args: string[]) => Promise<CliRun>;

const inProcess: Way = cli;
const subprocess: Way = (args) => walship(args);
const binary: Way = (args) => walship(args, { executable: BINARY });

/** Writes the databases the CLI is run on and what it must print for each. */
async function fixtures(dir: string) {
  // A WAL-mode database with 4 commits, copied while its Python writer is still open.
  const copy = path.join(dir, "copy");
  const { pageCounts } = await runSession("python", path.join(dir, "live", DB_NAME), {
    pageSize: PAGE,
    steps: [...standardSteps(71, 3, 5, 100, 6000), { copy }],
  });
  const files = readDbFiles(copy);
  const view = sqliteView(dir, files.dbFile, files.wal);
  const readMarks = [0, 1, 2, 3, 4].map((i) => u32le(files.shm!, 100 + 4 * i));
  const expected = {
    database: { pageSize: PAGE, pageCount: files.dbFile.length / PAGE, walMode: true },
    wal: {
      pageSize: PAGE,
      checkpointSeq: 0,
      salt1: u32be(files.wal, 16),
      salt2: u32be(files.wal, 20),
      bigEndianChecksum: false,
      validFrames: view.log,
      lastCommitFrame: view.log,
      commits: 4,
      dbPages: pageCounts[3],
    },
    shm: { mxFrame: view.log, nBackfill: 0, iChange: 4, readMarks },
  };
  assert.ok(view.log > 4);
  const human = [
    `database  ${files.db}: ${files.dbFile.length / PAGE} pages of 4096 bytes, WAL mode`,
    `wal       ${view.log} valid frames, 4 commits, last commit at frame ${view.log} (${
      pageCounts[3]
    } pages); ` +
    `salts ${expected.wal.salt1}/${expected.wal.salt2}, checkpoint 0, little-endian checksums`,
    `shm       mxFrame ${view.log}, backfilled 0, change counter 4, read marks ` +
    readMarks.map((m) => (m === 0xffffffff ? "-" : String(m))).join(" "),
  ].join("\n") + "\n";

  // A rollback-journal database written by the sqlite3 command line.
  const rollback = path.join(dir, "rollback.db");
  const rollbackPages = Number(
    sqlite3(
      rollback,
      "PRAGMA page_size=4096;\nCREATE TABLE t(v);\nINSERT INTO t VALUES (randomblob(9000));\nPRAGMA page_count;\n",
    ).trim(),
  );

  // A WAL emptied by a TRUNCATE checkpoint, the runtime's writer still open.
  const truncated = path.join(dir, "truncated");
  const t = await runSession("runtime", path.join(dir, "live2", DB_NAME), {
    pageSize: PAGE,
    steps: [...standardSteps(72, 2, 3, 100, 6000), { sql: "PRAGMA wal_checkpoint(TRUNCATE)" }, {
      copy: truncated,
    }],
  });
  const truncatedFiles = readDbFiles(truncated);
  assert.equal(truncatedFiles.wal.length, 0);

  const random = path.join(dir, "random.bin");
  fs.writeFileSync(random, randomBytes(prng(73), 8192));
  const text = path.join(dir, "notes.txt");
  fs.writeFileSync(text, "Just some notes.\nNot a database at all.\n");

  return {
    wal: { db: files.db, json: JSON.stringify(expected) + "\n", human },
    rollback: {
      db: rollback,
      json: JSON.stringify({
        database: { pageSize: PAGE, pageCount: rollbackPages, walMode: false },
        wal: null,
        shm: null,
      }) + "\n",
    },
    truncated: {
      db: truncatedFiles.db,
      json: JSON.stringify({
        database: { pageSize: PAGE, pageCount: t.pageCounts[2], walMode: true },
        wal: null,
        shm: {
          mxFrame: 0,
          nBackfill: 0,
          iChange: 3,
          readMarks: [0, 1, 2, 3, 4].map((i) => u32le(truncatedFiles.shm!, 100 + 4 * i)),
        },
      }) + "\n",
    },
    notSqlite: [random, text],
    missing: path.join(dir, "missing.db"),
  };
}

async function checkWay(way: Way) {
  await withTempDir("inspect-cli", async (dir) => {
    const f = await fixtures(dir);
    const ok = (stdout: string): CliRun => ({ code: 0, stdout, stderr: "" });

    assert.deepEqual(await way(["inspect", f.wal.db, "--json"]), ok(f.wal.json));
    assert.deepEqual(Object.keys(JSON.parse(f.wal.json)), ["database", "wal", "shm"]);
    assert.deepEqual(await way(["inspect", f.wal.db]), ok(f.wal.human));
    assert.deepEqual(await way(["inspect", f.rollback.db, "--json"]), ok(f.rollback.json));
    assert.deepEqual(await way(["inspect", f.truncated.db, "--json"]), ok(f.truncated.json));

    for (const file of f.notSqlite) {
      const r = await way(["inspect", file, "--json"]);
      assert.equal(r.code, 1, file);
      assert.equal(r.stdout, "");
      assert.equal(r.stderr, `walship: ${file} is not a SQLite database\n`);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, "one line, no stack trace");
    }
    assert.deepEqual(await way(["inspect", f.missing]), {
      code: 1,
      stdout: "",
      stderr: `walship: cannot read database ${f.missing}: no such file or directory\n`,
    });
    assert.deepEqual(await way(["frobnicate"]), {
      code: 1,
      stdout: "",
      stderr: 'walship: unknown command "frobnicate": see walship --help\n',
    });
  });
}

test("inspect CLI in-process (runCli): exact JSON and text, exit codes, one-line errors", () =>
  checkWay(inProcess));

test(`inspect CLI as a ${runtimeName} subprocess: exact JSON and text, exit codes, one-line errors`, () =>
  checkWay(subprocess));

test("inspect CLI as the compiled dist/walship: exact JSON and text, exit codes, one-line errors", async () => {
  if (!fs.existsSync(BINARY)) {
    assert.fail(`${BINARY} is missing: run \`npm run build\` first (bash scripts/build.sh)`);
  }
  await checkWay(binary);
});
