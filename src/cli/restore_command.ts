/**
 * `walship restore -o <out> <replica-url>`, or `<db-path>` as the config file lists it.
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import type { CAC } from "cac";
import { findDbConfig } from "../config/config.ts";
import { errorMessage, WalshipError } from "../errors.ts";
import { createLog, type Log } from "../log.ts";
import { openReplica } from "../replica/open_replica.ts";
import type { ReplicaStorage } from "../replica/storage.ts";
import { describeGenerations } from "../restore/describe.ts";
import { DEFAULT_PARALLELISM, restoreDatabase } from "../restore/restore.ts";
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
  config?: string;
  expandEnv: boolean;
  replica?: string;
}

/** Registers `restore` on the CLI. */
export function registerRestore(cli: CAC, output: Output): void {
  cli
    .command(
      "restore <replica-url-or-db>",
      "Rebuild a database from a replica: the latest state, a txid, or a point in time. Given a database path " +
        "listed in the config file, restores from its replica with the newest data (or --replica)",
    )
    .option("-o, --output <file>", "The database file to write (required)")
    .option("--timestamp <time>", "Restore the last transaction at or before this RFC 3339 time")
    .option("--txid <n>", "Restore exactly this transaction")
    .option("--generation <id>", "Only look in this generation")
    .option("--if-replica-exists", "Exit 0 quietly when the replica holds no backup")
    .option("--if-db-not-exists", "Exit 0 quietly when the output already exists")
    .option("--force", "Replace an existing output file")
    .option("--parallelism <n>", "Segments downloaded at once (at most 64 MiB of them ahead)", { default: DEFAULT_PARALLELISM })
    .option("--json", "Print the result as JSON")
    .option("--config <file>", "Config file to find the database's replicas in (default: $WALSHIP_CONFIG, else /etc/walship.yml)")
    .option("--no-expand-env", "Do not replace $VAR and ${VAR} in the config file")
    .option("--replica <name-or-url>", "With a database path: restore from this replica of it")
    .example((bin) => `  ${bin} restore -o app.db s3://my-bucket/app`)
    .example((bin) => `  ${bin} restore -o app.db --timestamp 2026-11-21T09:30:00Z s3://my-bucket/app`)
    .example((bin) => `  ${bin} restore -o app.db --if-db-not-exists --if-replica-exists file:///var/backups/app`)
    .example((bin) => `  ${bin} restore -o /tmp/app.db --config /etc/walship.yml /var/lib/app/app.db`)
    .action(async (arg: string, flags: RestoreFlags) => {
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
      const log = createLog({ level: "warn" });
      const storage = await chooseReplica(arg, flags, log);
      const progress = flags.json || output !== processOutput ? null : createProgress({ label: "restoring" });
      try {
        const r = await restoreDatabase({
          storage,
          output: flags.output,
          target,
          force: flags.force,
          parallelism,
          log,
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

/**
 * The replica to restore from: `arg` itself when it is a URL or no config
 * lists it as a database; else that database's replica named by --replica,
 * its only one, or the one whose newest generation reaches the highest txid
 * (unreachable ones skipped with a warning).
 */
async function chooseReplica(arg: string, flags: RestoreFlags, log: Log): Promise<ReplicaStorage> {
  const isUrl = /^[A-Za-z][A-Za-z0-9+.-]+:\/\//.test(arg);
  const found = isUrl ? null : findDbConfig(arg, flags.config, { expandEnv: flags.expandEnv });
  if (!found) {
    if (flags.replica) throw new WalshipError("BAD_ARGUMENT", `--replica needs a database path listed in the config, not ${arg}`);
    if (flags.config && !isUrl) {
      throw new WalshipError("BAD_ARGUMENT", `${path.resolve(arg)} is not among the databases in ${path.resolve(flags.config)}`);
    }
    return openReplica(arg);
  }
  const candidates = found.db.replicas.map((r) => ({ name: r.name, storage: openReplica(r.url, { env: r.env }) }));
  if (flags.replica) {
    const pick = candidates.find((c) => c.name === flags.replica || c.storage.location === flags.replica);
    if (!pick) {
      const names = candidates.map((c) => `${c.name} (${c.storage.location})`).join(", ");
      throw new WalshipError("BAD_ARGUMENT", `${found.db.path} has no replica "${flags.replica}": it has ${names}`);
    }
    return pick.storage;
  }
  if (candidates.length === 1) return candidates[0].storage;
  let best: { storage: ReplicaStorage; txid: number } | null = null;
  let lastError: unknown = null;
  for (const c of candidates) {
    try {
      const newest = (await describeGenerations(c.storage)).at(-1);
      const txid = newest?.lastTxid ?? 0;
      if (!best || txid > best.txid) best = { storage: c.storage, txid };
    } catch (err) {
      lastError = err;
      log.warn(`skipping replica ${c.storage.location}: ${errorMessage(err)}`);
    }
  }
  if (!best) throw lastError;
  return best.storage;
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
