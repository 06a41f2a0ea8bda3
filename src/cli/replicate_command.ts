/**
 * `walship replicate <db> <replica-url>`.
 *
 * @module
 */

import type { CAC } from "cac";
import { parseDuration } from "../duration.ts";
import { WalshipError } from "../errors.ts";
import { createLog, LOG_LEVELS, type LogLevel } from "../log.ts";
import { openReplica } from "../replica/open_replica.ts";
import { Replicator, type StopResult } from "../replicate/replicator.ts";
import type { Output } from "./output.ts";

interface ReplicateFlags {
  syncInterval: string;
  snapshotInterval: string;
  cacheDir?: string;
  logLevel: string;
  shutdownTimeout: string;
  pin: boolean;
}

/** Registers `replicate` on the CLI. */
export function registerReplicate(cli: CAC, _output: Output): void {
  cli
    .command("replicate <db> <replica-url>", "Ship every commit of a WAL-mode database to a replica, until stopped")
    .option("--sync-interval <duration>", "Upload at most once per interval", { default: "1s" })
    .option("--snapshot-interval <duration>", "Take a fresh snapshot this often", { default: "24h" })
    .option("--cache-dir <dir>", "Local cache of objects waiting for upload (default: .<db>-walship beside the db)")
    .option("--shutdown-timeout <duration>", "On SIGTERM, wait this long for uploads before exiting 1", { default: "30s" })
    .option("--pin", "Hold a read slot in SQLite's own locking so the WAL cannot restart unread (--no-pin: don't)", { default: true })
    .option("--log-level <level>", "debug, info, warn or error", { default: "info" })
    .example((bin) => `  ${bin} replicate app.db s3://my-bucket/app`)
    .example((bin) => `  ${bin} replicate app.db file:///var/backups/app --sync-interval 5s`)
    .example((bin) => `  ${bin} replicate app.db "s3://bucket/app?endpoint=http://127.0.0.1:9000&region=us-east-1"`)
    .action(async (db: string, url: string, flags: ReplicateFlags) => {
      if (!(flags.logLevel in LOG_LEVELS)) {
        throw new WalshipError("BAD_ARGUMENT", `--log-level "${flags.logLevel}": use debug, info, warn or error`);
      }
      const log = createLog({ level: flags.logLevel as LogLevel });
      const shutdownTimeout = parseDuration(flags.shutdownTimeout, "--shutdown-timeout");
      const replicator = new Replicator(db, {
        storage: openReplica(url),
        cacheDir: flags.cacheDir,
        syncInterval: parseDuration(flags.syncInterval, "--sync-interval"),
        snapshotInterval: parseDuration(flags.snapshotInterval, "--snapshot-interval"),
        pin: flags.pin,
        log,
      });
      let signals = 0;
      let stopping: Promise<StopResult> | null = null;
      let stop!: () => void;
      const stopped = new Promise<void>((resolve) => (stop = resolve));
      const onSignal = (name: string) => {
        signals++;
        if (signals > 1) {
          log.warn(`${name} again: exiting now; waiting objects stay in the local cache for the next start`);
          process.exit(1);
        }
        log.info(`${name}: shipping what is committed, then exiting (send it again to exit at once)`);
        // The one stop call: it also ends a wait for the database, and is awaited below.
        stopping ??= replicator.stop({ timeout: shutdownTimeout });
        stopping.catch(() => {});
        stop();
      };
      process.on("SIGINT", () => onSignal("SIGINT"));
      process.on("SIGTERM", () => onSignal("SIGTERM"));
      try {
        await replicator.start();
      } catch (err) {
        if (signals > 0 && err instanceof WalshipError && err.code === "NOT_FOUND") {
          log.info("stopped before the database appeared");
          return 0;
        }
        throw err;
      }
      log.info("replicating", { db: replicator.db, replica: replicator.status().replica });
      await stopped;
      const left = await stopping!;
      const s = replicator.status();
      if (left.pendingObjects > 0) {
        log.warn(
          `stopped with ${left.pendingObjects} object(s) not yet uploaded (the replica stayed unreachable); ` +
            `they wait in the local cache and go up at the next start`,
          { txid: s.txid, uploadedTxid: s.uploadedTxid, lastError: s.lastError },
        );
        return 1;
      }
      log.info("stopped", { txid: s.txid, uploadedTxid: s.uploadedTxid });
      return 0;
    });
}
