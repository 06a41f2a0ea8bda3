/**
 * `walship restore -o <out> <replica-url>`.
 *
 * @module
 */

import fs from "node:fs";
import type { CAC } from "cac";
import { WalshipError } from "../errors.ts";
import { createLog } from "../log.ts";
import { openReplica } from "../replica/open_replica.ts";
import { restoreDatabase } from "../restore/restore.ts";
import { type Output, processOutput } from "./output.ts";
import { createProgress } from "./progress.ts";

interface RestoreFlags {
  output?: string;
  timestamp?: string;
  txid?: string | number;
  generation?: string;
  ifReplicaExists?: boolean;
  ifDbNotExists?: boolean;
  force?: boolean;
  parallelism: string | number;
  json?: boolean;
}

/** Registers `restore` on the CLI. */
export function registerRestore(cli: CAC, output: Output): void {
  cli
    .command("restore <replica-url>", "Rebuild a database from a replica: the latest state, a txid, or a point in time")
    .option("-o, --output <file>", "The database file to write (required)")
    .option("--timestamp <time>", "Restore the last transaction at or before this RFC 3339 time")
    .option("--txid <n>", "Restore exactly this transaction")
    .option("--generation <id>", "Only look in this generation")
    .option("--if-replica-exists", "Exit 0 quietly when the replica holds no backup")
    .option("--if-db-not-exists", "Exit 0 quietly when the output already exists")
    .option("--force", "Replace an existing output file")
    .option("--parallelism <n>", "Objects downloaded at once", { default: 8 })
    .option("--json", "Print the result as JSON")
    .example((bin) => `  ${bin} restore -o app.db s3://my-bucket/app`)
    .example((bin) => `  ${bin} restore -o app.db --timestamp 2026-11-21T09:30:00Z s3://my-bucket/app`)
    .example((bin) => `  ${bin} restore -o app.db --if-db-not-exists --if-replica-exists file:///var/backups/app`)
    .action(async (url: string, flags: RestoreFlags) => {
      if (!flags.output) throw new WalshipError("BAD_ARGUMENT", "restore needs -o <file>: where to write the database");
      if (flags.ifDbNotExists && fs.existsSync(flags.output)) return 0;
      const target = {
        txid: flags.txid === undefined ? undefined : parseTxid(flags.txid),
        timestamp: flags.timestamp === undefined ? undefined : parseTimestamp(flags.timestamp),
        generation: flags.generation,
      };
      if (target.txid !== undefined && target.timestamp !== undefined) {
        throw new WalshipError("BAD_ARGUMENT", "give --txid or --timestamp, not both");
      }
      const parallelism = Number(flags.parallelism);
      if (!Number.isInteger(parallelism) || parallelism < 1) {
        throw new WalshipError("BAD_ARGUMENT", `--parallelism "${flags.parallelism}" must be a whole number from 1`);
      }
      // A progress bar (bytes, rate, ETA) only when stderr is a terminal, and
      // never with --json or when a caller captures the output.
      const progress = flags.json || output !== processOutput ? null : createProgress({ label: "restoring" });
      try {
        const r = await restoreDatabase({
          storage: openReplica(url),
          output: flags.output,
          target,
          force: flags.force,
          parallelism,
          log: createLog({ level: "warn" }),
          onProgress: progress?.update,
        }).finally(() => progress?.finish());
        const at = new Date(r.time).toISOString();
        output.out(
          flags.json
            ? JSON.stringify(r)
            : `restored ${r.output}: txid ${r.txid} of generation ${r.generation}, observed ${at}, ` +
              `${r.pages} pages of ${r.pageSize} bytes, from ${r.objects} objects`,
        );
        return 0;
      } catch (err) {
        if (flags.ifReplicaExists && err instanceof WalshipError && err.code === "NO_BACKUP") return 0;
        throw err;
      }
    });
}

function parseTxid(v: string | number): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new WalshipError("BAD_ARGUMENT", `--txid "${v}" must be a whole number from 1`);
  return n;
}

function parseTimestamp(v: string): number {
  const t = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/i.test(v) ? Date.parse(v) : NaN;
  if (Number.isNaN(t)) {
    throw new WalshipError("BAD_ARGUMENT", `--timestamp "${v}" is not an RFC 3339 time like 2026-11-21T09:30:00Z`);
  }
  return t;
}
