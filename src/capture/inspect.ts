/**
 * `walship inspect`: what a database, its -wal and its -shm hold right now,
 * read without locking or changing anything.
 *
 * @module
 */

import fs from "node:fs";
import { WalshipError } from "../errors.ts";
import { DB_HEADER_SIZE, parseDbHeader } from "../sqlite/db_header.ts";
import { readWalHeader, scanFrames } from "../sqlite/wal_scanner.ts";
import { ioError, openReadOnly, readHead, readWalIndexFile } from "./file_source.ts";

/** The report of {@linkcode inspect}; the same object `walship inspect --json` prints. */
export interface InspectReport {
  database: { pageSize: number | null; pageCount: number; walMode: boolean };
  wal: null | {
    pageSize: number;
    checkpointSeq: number;
    salt1: number;
    salt2: number;
    bigEndianChecksum: boolean;
    /** Frames from frame 1 that pass the salt and checksum-chain test, uncommitted tail included. */
    validFrames: number;
    /** 1-based index of the last commit frame among them; 0 when none. */
    lastCommitFrame: number;
    /** Commit frames among frames 1..lastCommitFrame. */
    commits: number;
    /** Database size in pages after the last commit; null when none. */
    dbPages: number | null;
  };
  shm: null | { mxFrame: number; nBackfill: number; iChange: number; readMarks: number[] };
}

/**
 * Reads `db`, `db-wal` and `db-shm` and reports what is there. Throws
 * NOT_FOUND when `db` is absent and NOT_SQLITE when it is not a database.
 *
 * @example
 * ```ts
 * const report = inspect("app.db");
 * console.log(report.wal?.commits ?? 0, "commits in the WAL");
 * ```
 */
export function inspect(db: string): InspectReport {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(db);
  } catch (err) {
    throw ioError(`cannot read database ${db}`, err);
  }
  if (!stat.isFile()) throw new WalshipError("NOT_SQLITE", `${db} is not a SQLite database (not a file)`);
  const head = readHead(db, DB_HEADER_SIZE) ?? new Uint8Array(0);
  let database: InspectReport["database"];
  if (head.length === 0) {
    // SQLite treats an empty file as an empty database.
    database = { pageSize: null, pageCount: 0, walMode: false };
  } else {
    let header;
    try {
      header = parseDbHeader(head);
    } catch (err) {
      throw new WalshipError("NOT_SQLITE", `${db} is not a SQLite database`, { cause: err });
    }
    database = {
      pageSize: header.pageSize,
      pageCount: header.pageCount ?? Math.floor(stat.size / header.pageSize),
      walMode: header.walMode,
    };
  }
  const shmHeader = readWalIndexFile(`${db}-shm`);
  return {
    database,
    wal: inspectWal(`${db}-wal`),
    shm: shmHeader && {
      mxFrame: shmHeader.mxFrame,
      nBackfill: shmHeader.nBackfill,
      iChange: shmHeader.iChange,
      readMarks: shmHeader.readMarks,
    },
  };
}

function inspectWal(path: string): InspectReport["wal"] {
  const file = openReadOnly(path);
  if (!file) return null;
  try {
    const header = readWalHeader(file);
    if (!header) return null;
    const scan = scanFrames(file, header, null);
    const last = scan.transactions.at(-1);
    return {
      pageSize: header.pageSize,
      checkpointSeq: header.checkpointSeq,
      salt1: header.salt1,
      salt2: header.salt2,
      bigEndianChecksum: header.bigEndian,
      validFrames: scan.lastValidFrame,
      lastCommitFrame: scan.position.frame,
      commits: scan.transactions.length,
      dbPages: last ? last.dbSize : null,
    };
  } finally {
    file.close();
  }
}

/** A short human summary of a report, a line per file. */
export function formatInspect(db: string, r: InspectReport): string {
  const lines: string[] = [];
  const d = r.database;
  lines.push(
    `database  ${db}: ${d.pageSize === null ? "empty" : `${d.pageCount} pages of ${d.pageSize} bytes`}, ` +
      (d.walMode ? "WAL mode" : "rollback-journal mode (not WAL)"),
  );
  const w = r.wal;
  lines.push(
    w === null
      ? "wal       none (absent, empty, or no valid header)"
      : `wal       ${w.validFrames} valid frames, ${w.commits} commits, last commit at frame ${w.lastCommitFrame}` +
        (w.dbPages === null ? "" : ` (${w.dbPages} pages)`) +
        (w.validFrames > w.lastCommitFrame ? `, ${w.validFrames - w.lastCommitFrame} uncommitted` : "") +
        `; salts ${w.salt1}/${w.salt2}, checkpoint ${w.checkpointSeq}, ` +
        `${w.bigEndianChecksum ? "big" : "little"}-endian checksums`,
  );
  const s = r.shm;
  lines.push(
    s === null
      ? "shm       none (absent or not initialized)"
      : `shm       mxFrame ${s.mxFrame}, backfilled ${s.nBackfill}, change counter ${s.iChange}, ` +
        `read marks ${s.readMarks.map((m) => (m === 0xffffffff ? "-" : String(m))).join(" ")}`,
  );
  return lines.join("\n");
}
