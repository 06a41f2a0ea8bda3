/**
 * `walship replicate <db> <replica-url>...`, or `walship replicate` with a
 * config file for many databases; optionally running the app as a child
 * (`--exec`) and serving Prometheus metrics (`--metrics-addr`).
 *
 * @module
 */

import fs from "node:fs";
import type { CAC } from "cac";
import { configPath, type DbConfig, loadConfig } from "../config/config.ts";
import { parseDuration } from "../duration.ts";
import { errorMessage, WalshipError } from "../errors.ts";
import { createLog, type Log, LOG_LEVELS, type LogLevel } from "../log.ts";
import { startMetricsServer } from "../metrics/server.ts";
import { openReplica } from "../replica/open_replica.ts";
import { Replicator, type StopResult } from "../replicate/replicator.ts";
import { runChild, splitCommand } from "./exec.ts";
import { createProgress } from "./progress.ts";
import type { Output } from "./output.ts";

interface ReplicateFlags {
  syncInterval?: string;
  snapshotInterval?: string;
  cacheDir?: string;
  logLevel?: string;
  shutdownTimeout: string;
  pin: boolean;
  config?: string;
  expandEnv: boolean;
  exec?: string;
  metricsAddr?: string;
  retention?: string;
}

const DEFAULT_SYNC = 1000;
const DEFAULT_SNAPSHOT = 24 * 3600_000;

/** Registers `replicate` on the CLI. */
export function registerReplicate(cli: CAC, _output: Output): void {
  cli
    .command(
      "replicate [db] [...replica-urls]",
      "Ship every commit of WAL-mode databases to replicas, until stopped (without arguments: the databases in the config file)",
    )
    .option("--config <file>", "Litestream-compatible YAML listing databases and replicas (default: $WALSHIP_CONFIG, else /etc/walship.yml)")
    .option("--no-expand-env", "Do not replace $VAR and ${VAR} in the config file")
    .option("--exec <command>", "Run the app as a child once replication runs; forward SIGINT/SIGTERM; exit with its code")
    .option("--metrics-addr <host:port>", "Serve Prometheus /metrics and /healthz here, e.g. :9090 (config: addr)")
    .option("--sync-interval <duration>", "Upload at most once per interval (default 1s, or the config's sync-interval)")
    .option("--snapshot-interval <duration>", "Take a fresh snapshot this often (default 24h, or the config's snapshot-interval)")
    .option("--retention <duration>", "Delete states older than this after each snapshot, e.g. 72h (default: keep all, or the config's retention)")
    .option("--cache-dir <dir>", "Local cache of objects waiting for upload (default: .<db>-walship beside the db)")
    .option("--shutdown-timeout <duration>", "On SIGTERM, wait this long for uploads before exiting 1", { default: "30s" })
    .option("--pin", "Hold a read slot in SQLite's own locking so the WAL cannot restart unread (--no-pin: don't)", { default: true })
    .option("--log-level <level>", "debug, info, warn or error (default info, or the config's logging.level)")
    .example((bin) => `  ${bin} replicate app.db s3://my-bucket/app`)
    .example((bin) => `  ${bin} replicate app.db file:///var/backups/app s3://my-bucket/app --sync-interval 5s`)
    .example((bin) => `  ${bin} replicate app.db "s3://bucket/app?endpoint=http://127.0.0.1:9000&region=us-east-1"`)
    .example((bin) => `  ${bin} replicate --config /etc/walship.yml --metrics-addr :9090`)
    .example((bin) => `  ${bin} replicate app.db s3://my-bucket/app --exec "node server.js"`)
    .action(async (db: string | undefined, urls: string[], flags: ReplicateFlags) => {
      const jobs = readJobs(db, urls ?? [], flags);
      const level = flags.logLevel ?? jobs.logLevel ?? "info";
      if (!(level in LOG_LEVELS)) {
        throw new WalshipError("BAD_ARGUMENT", `--log-level "${level}": use debug, info, warn or error`);
      }
      const log = createLog({ level: level as LogLevel });
      for (const w of jobs.warnings) log.warn(w);
      const shutdownTimeout = parseDuration(flags.shutdownTimeout, "--shutdown-timeout");
      const execArgs = jobs.exec === undefined ? null : splitCommand(jobs.exec);
      const replicators = jobs.dbs.map((d) => {
        const storages = d.replicas.map((r) => openReplica(r.url, { env: r.env }));
        return new Replicator(d.path, {
          storage: storages,
          retention: Object.fromEntries(storages.map((s, i) => [s.location, d.replicas[i].retention])),
          cacheDir: d.cacheDir,
          syncInterval: d.syncInterval,
          snapshotInterval: d.snapshotInterval,
          pin: flags.pin,
          log,
          // A bar for large snapshots on a terminal; never with several databases interleaving.
          snapshotProgress: jobs.dbs.length === 1 ? () => createProgress({ label: "snapshot" }) : undefined,
        });
      });
      return await run(replicators, { log, shutdownTimeout, execArgs, metricsAddr: jobs.addr });
    });
}

/** What to replicate, from the arguments or the config file. */
interface Jobs {
  dbs: Array<{ path: string; cacheDir?: string; syncInterval: number; snapshotInterval: number; replicas: DbConfig["replicas"] }>;
  addr?: string;
  exec?: string;
  logLevel?: string;
  warnings: string[];
}

function readJobs(db: string | undefined, urls: string[], flags: ReplicateFlags): Jobs {
  const sync = flags.syncInterval === undefined ? undefined : parseDuration(flags.syncInterval, "--sync-interval");
  const snap = flags.snapshotInterval === undefined
    ? undefined
    : parseDuration(flags.snapshotInterval, "--snapshot-interval");
  const retention = flags.retention === undefined ? undefined : parseDuration(flags.retention, "--retention");
  if (db !== undefined) {
    if (flags.config) throw new WalshipError("BAD_ARGUMENT", "give either a database and replica URLs, or --config, not both");
    if (urls.length === 0) {
      throw new WalshipError("BAD_ARGUMENT", `no replica URL for ${db}: walship replicate ${db} s3://bucket/prefix`);
    }
    return {
      dbs: [{
        path: db,
        cacheDir: flags.cacheDir,
        syncInterval: sync ?? DEFAULT_SYNC,
        snapshotInterval: snap ?? Math.min(retention ?? DEFAULT_SNAPSHOT, DEFAULT_SNAPSHOT),
        replicas: urls.map((url, i) => ({ name: `replica ${i + 1}`, url, env: process.env, retention })),
      }],
      addr: flags.metricsAddr,
      exec: flags.exec,
      warnings: [],
    };
  }
  const { file, named } = configPath(flags.config);
  if (!named && !fs.existsSync(file)) {
    throw new WalshipError(
      "BAD_ARGUMENT",
      `no database given and no config at ${file}: run walship replicate DB REPLICA-URL, or pass --config FILE`,
    );
  }
  const config = loadConfig(file, { expandEnv: flags.expandEnv });
  if (flags.cacheDir && config.dbs.length > 1) {
    throw new WalshipError("BAD_ARGUMENT", "--cache-dir is for one database; set meta-path per database in the config");
  }
  const min = (values: Array<number | undefined>, fallback: number) => {
    const set = values.filter((v): v is number => v !== undefined);
    return set.length ? Math.min(...set) : fallback;
  };
  return {
    dbs: config.dbs.map((d) => {
      const replicas = d.replicas.map((r) => ({ ...r, retention: retention ?? r.retention }));
      return {
        path: d.path,
        cacheDir: flags.cacheDir ?? d.cacheDir,
        // One capture pipeline per database feeds every replica: the most eager replica sets the pace.
        syncInterval: sync ?? min(replicas.map((r) => r.syncInterval), DEFAULT_SYNC),
        // As in Litestream, retention without a snapshot interval snapshots once per retention period.
        snapshotInterval: snap ?? min(
          replicas.map((r) => r.snapshotInterval),
          min(replicas.map((r) => r.retention), DEFAULT_SNAPSHOT),
        ),
        replicas,
      };
    }),
    addr: flags.metricsAddr ?? config.addr,
    exec: flags.exec ?? config.exec,
    logLevel: config.logLevel,
    warnings: config.warnings,
  };
}

/**
 * Runs the replicators until a signal (or the child, with `--exec`) ends
 * them; resolves to the exit code.
 */
async function run(
  replicators: Replicator[],
  options: { log: Log; shutdownTimeout: number; execArgs: string[] | null; metricsAddr?: string },
): Promise<number> {
  const { log, shutdownTimeout, execArgs } = options;
  let stopping: Promise<StopResult[]> | null = null;
  const stopAll = () =>
    stopping ??= Promise.all(replicators.map((r) =>
      r.stop({ timeout: shutdownTimeout }).catch((err) => {
        log.error(`stopping ${r.db} failed: ${errorMessage(err)}`);
        return { pendingObjects: 1, pendingBytes: 0 };
      })
    ));
  let child: ReturnType<typeof runChild> | null = null;
  let signals = 0;
  let wake!: () => void;
  const woken = new Promise<void>((resolve) => (wake = resolve));
  const onSignal = (name: "SIGINT" | "SIGTERM") => {
    if (child && !child.exited) {
      log.info(`${name}: passing it to the child (pid ${child.pid})`);
      child.signal(name);
      return;
    }
    signals++;
    if (signals > 1) {
      log.warn(`${name} again: exiting now; waiting objects stay in the local cache for the next start`);
      process.exit(1);
    }
    log.info(`${name}: shipping what is committed, then exiting (send it again to exit at once)`);
    // The one stop call: it also ends a wait for a database, and is awaited below.
    stopAll().catch(() => {});
    wake();
  };
  const sigint = () => onSignal("SIGINT");
  const sigterm = () => onSignal("SIGTERM");
  process.on("SIGINT", sigint);
  process.on("SIGTERM", sigterm);
  let metrics: Awaited<ReturnType<typeof startMetricsServer>> | null = null;
  try {
    if (options.metricsAddr !== undefined) {
      metrics = await startMetricsServer(options.metricsAddr, () => replicators.map((r) => r.status()), { log });
      log.info("serving metrics", { addr: options.metricsAddr, port: metrics.port, paths: "/metrics /healthz" });
    }
    const started = await Promise.allSettled(replicators.map((r) => r.start()));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) {
      if (signals > 0 && failed.reason instanceof WalshipError && failed.reason.code === "NOT_FOUND") {
        log.info("stopped before the database appeared");
        await stopAll();
        return 0;
      }
      await stopAll();
      throw failed.reason;
    }
    for (const r of replicators) {
      const s = r.status();
      log.info("replicating", { db: r.db, replicas: s.replicas.map((x) => x.replica).join(" "), generation: s.generation });
    }
    let exitCode = 0;
    if (execArgs && signals === 0) {
      child = runChild(execArgs, log);
      const result = await Promise.race([child.done, woken.then(() => null)]);
      if (result) {
        exitCode = result.code;
        log.info("the child exited: shipping what is committed", { code: result.code, signal: result.signal });
        stopAll().catch(() => {});
      } else {
        // Stopped by our own second path (cannot happen while the child runs: signals go to it).
        child.signal("SIGTERM");
        await child.done;
      }
    } else {
      await woken;
    }
    const left = await stopAll();
    const pending = left.reduce((n, l) => n + l.pendingObjects, 0);
    for (const r of replicators) {
      const s = r.status();
      log.info("stopped", { db: r.db, txid: s.txid, uploadedTxid: s.uploadedTxid });
    }
    if (pending > 0) {
      const s = replicators.map((r) => r.status()).find((s) => s.pendingObjects > 0);
      log.warn(
        `stopped with ${pending} object(s) not yet uploaded (a replica stayed unreachable); ` +
          `they wait in the local cache and go up at the next start`,
        { db: s?.db, txid: s?.txid, uploadedTxid: s?.uploadedTxid, lastError: s?.lastError },
      );
      return exitCode === 0 ? 1 : exitCode;
    }
    return exitCode;
  } finally {
    process.off("SIGINT", sigint);
    process.off("SIGTERM", sigterm);
    await metrics?.close();
  }
}
