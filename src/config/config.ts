/**
 * The configuration file: Litestream-compatible YAML, so a Litestream user
 * can point walship at the file they have. Parsed with the `yaml` package;
 * `$VAR` and `${VAR}` are expanded from the environment first (unless
 * turned off), as Litestream does. Keys walship does not know are reported
 * as warnings naming them; Litestream keys that mean nothing to walship
 * (it never checkpoints) are reported the same way, with the reason.
 *
 * ```yaml
 * addr: ":9090"                 # /metrics and /healthz
 * access-key-id: ${AWS_ACCESS_KEY_ID}
 * secret-access-key: ${AWS_SECRET_ACCESS_KEY}
 * dbs:
 *   - path: /var/lib/app/app.db
 *     replicas:
 *       - url: s3://bucket/app
 *       - type: file
 *         path: /var/backups/app
 * ```
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { parse as parseYaml } from "yaml";
import { parseDuration } from "../duration.ts";
import { errorMessage, WalshipError } from "../errors.ts";
import { LOG_LEVELS, type LogLevel } from "../log.ts";

/** Where walship looks for its config when none is named: `$WALSHIP_CONFIG`, then this. */
export const DEFAULT_CONFIG_PATH = "/etc/walship.yml";

/** One replica of a database, as the config file describes it. */
export interface ReplicaConfig {
  /** The replica's name in the file (or its position, `replica 1`), for messages. */
  name: string;
  /** The replica URL walship opens (never holds credentials). */
  url: string;
  /** Environment for opening it: credentials from the file override the process's. */
  env: Record<string, string | undefined>;
  /** ms; absent when the file does not say. */
  syncInterval?: number;
  snapshotInterval?: number;
  retention?: number;
}

/** One database in the config file. */
export interface DbConfig {
  /** Absolute path of the database. */
  path: string;
  /** `meta-path`: walship's local cache directory for it. */
  cacheDir?: string;
  replicas: ReplicaConfig[];
}

/** A parsed config file. */
export interface Config {
  /** The file it came from. */
  file: string;
  /** `addr`: where /metrics and /healthz listen. */
  addr?: string;
  /** `exec`: the command to run as a child. */
  exec?: string;
  /** `logging.level`. */
  logLevel?: LogLevel;
  dbs: DbConfig[];
  /** One line per key walship ignored, naming it. */
  warnings: string[];
}

/** Options for {@linkcode parseConfig} and {@linkcode loadConfig}. */
export interface ConfigOptions {
  /** For `${VAR}` expansion and credentials; default `process.env`. */
  env?: Record<string, string | undefined>;
  /** Expand `$VAR` and `${VAR}`; default true. */
  expandEnv?: boolean;
}

const TOP_KEYS = new Set(["dbs", "addr", "exec", "logging", "access-key-id", "secret-access-key", "region", "endpoint"]);
const LOGGING_KEYS = new Set(["level", "type", "stderr"]);
const DB_KEYS = new Set(["path", "replicas", "replica", "meta-path"]);
const REPLICA_KEYS = new Set([
  "url",
  "name",
  "type",
  "path",
  "bucket",
  "region",
  "endpoint",
  "force-path-style",
  "access-key-id",
  "secret-access-key",
  "sync-interval",
  "snapshot-interval",
  "retention",
]);
/** Litestream keys that walship accepts and does not need, with why. */
const IGNORED: Record<string, string> = {
  "monitor-interval": "walship watches the WAL for changes",
  "checkpoint-interval": "walship never checkpoints; the application's SQLite does",
  "min-checkpoint-page-count": "walship never checkpoints; the application's SQLite does",
  "max-checkpoint-page-count": "walship never checkpoints; the application's SQLite does",
  "busy-timeout": "walship takes no SQLite locks that wait",
  "retention-check-interval": "retention is checked after each snapshot",
  "validation-interval": "every object carries a SHA-256 checked on restore",
  "skip-verify": "TLS certificates are always verified",
};
const LOGGING_IGNORED: Record<string, string> = {
  type: "logs are JSON lines, or readable lines on a terminal (WALSHIP_LOG_FORMAT=json|pretty)",
  stderr: "logs always go to stderr",
};

/**
 * The config file to use: `explicit` (from `--config`), else
 * `$WALSHIP_CONFIG`, else {@linkcode DEFAULT_CONFIG_PATH}; with whether it
 * was asked for by name (then it must exist).
 *
 * @example
 * ```ts
 * configPath(undefined, { WALSHIP_CONFIG: "/srv/walship.yml" }); // { file: "/srv/walship.yml", named: true }
 * ```
 */
export function configPath(
  explicit: string | undefined,
  env: Record<string, string | undefined> = process.env,
): { file: string; named: boolean } {
  if (explicit) return { file: path.resolve(explicit), named: true };
  if (env.WALSHIP_CONFIG) return { file: path.resolve(env.WALSHIP_CONFIG), named: true };
  return { file: DEFAULT_CONFIG_PATH, named: false };
}

/**
 * Reads and parses a config file. Throws `BAD_CONFIG` with one line naming
 * the file and what is wrong.
 *
 * @example
 * ```ts
 * const config = loadConfig("/etc/walship.yml");
 * for (const w of config.warnings) console.warn(w);
 * ```
 */
export function loadConfig(file: string, options: ConfigOptions = {}): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : errorMessage(err);
    throw new WalshipError("BAD_CONFIG", `cannot read config ${file}: ${why}`);
  }
  return parseConfig(text, file, options);
}

/**
 * Parses config text (see the module docs for the format).
 *
 * @example
 * ```ts
 * const c = parseConfig("dbs:\n  - path: /data/app.db\n    replicas:\n      - url: s3://b/app\n", "inline.yml");
 * c.dbs[0].replicas[0].url; // "s3://b/app"
 * ```
 */
export function parseConfig(text: string, file: string, options: ConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  const fail = (why: string) => new WalshipError("BAD_CONFIG", `config ${file}: ${why}`);
  const expanded = options.expandEnv === false ? text : expandEnv(text, env);
  let doc: unknown;
  try {
    doc = parseYaml(expanded, { prettyErrors: false });
  } catch (err) {
    throw fail(`not valid YAML: ${errorMessage(err).split("\n")[0]}`);
  }
  if (doc === null || doc === undefined) throw fail("empty: list databases under dbs:");
  if (!isMap(doc)) throw fail("the top level must be a mapping with dbs:");

  const warnings: string[] = [];
  const unknown = (where: string, key: string, why = where === "" ? undefined : IGNORED[key]) => {
    warnings.push(
      why ? `config ${file}: ${where}${key} is ignored: ${why}` : `config ${file}: unknown key ${where}${key} (ignored)`,
    );
  };
  for (const key of Object.keys(doc)) if (!TOP_KEYS.has(key)) unknown("", key);

  const str = (v: unknown, where: string): string | undefined => {
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v === "string") return v;
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    throw fail(`${where} must be a string`);
  };
  const duration = (v: unknown, where: string): number | undefined => {
    const s = str(v, where);
    return s === undefined ? undefined : parseDuration(s, `${where} in ${file}`);
  };

  const config: Config = { file, dbs: [], warnings };
  config.addr = str(doc.addr, "addr");
  config.exec = str(doc.exec, "exec");
  if (doc.logging !== undefined && doc.logging !== null) {
    if (!isMap(doc.logging)) throw fail("logging must be a mapping");
    for (const key of Object.keys(doc.logging)) if (!LOGGING_KEYS.has(key)) unknown("logging.", key);
    for (const key of Object.keys(LOGGING_IGNORED)) {
      if (key in doc.logging) unknown("logging.", key, LOGGING_IGNORED[key]);
    }
    const level = str(doc.logging.level, "logging.level")?.toLowerCase();
    if (level !== undefined) {
      if (!(level in LOG_LEVELS)) throw fail(`logging.level "${level}": use debug, info, warn or error`);
      config.logLevel = level as LogLevel;
    }
  }
  const global = {
    accessKeyId: str(doc["access-key-id"], "access-key-id"),
    secretAccessKey: str(doc["secret-access-key"], "secret-access-key"),
    region: str(doc.region, "region"),
    endpoint: str(doc.endpoint, "endpoint"),
  };

  if (doc.dbs === undefined || doc.dbs === null) throw fail("no databases: list them under dbs:");
  if (!Array.isArray(doc.dbs)) throw fail("dbs must be a list");
  const seen = new Set<string>();
  doc.dbs.forEach((entry: unknown, i: number) => {
    const at = `dbs[${i}]`;
    if (!isMap(entry)) throw fail(`${at} must be a mapping with path: and replicas:`);
    for (const key of Object.keys(entry)) if (!DB_KEYS.has(key)) unknown(`${at}.`, key);
    const dbPath = str(entry.path, `${at}.path`);
    if (!dbPath) throw fail(`${at} has no path`);
    const abs = path.resolve(path.dirname(path.resolve(file)), expandHome(dbPath, env));
    if (seen.has(abs)) throw fail(`${abs} is listed twice`);
    seen.add(abs);
    let list: unknown[];
    if (entry.replicas !== undefined && entry.replicas !== null) {
      if (!Array.isArray(entry.replicas)) throw fail(`${at}.replicas must be a list`);
      list = [...entry.replicas];
    } else list = [];
    if (entry.replica !== undefined && entry.replica !== null) list.push(entry.replica);
    if (list.length === 0) throw fail(`${at} (${dbPath}) has no replicas`);
    const replicas = list.map((r, j) => {
      const where = `${at}.replicas[${j}]`;
      if (!isMap(r)) throw fail(`${where} must be a mapping with url: or type:`);
      for (const key of Object.keys(r)) if (!REPLICA_KEYS.has(key)) unknown(`${where}.`, key);
      const name = str(r.name, `${where}.name`) ?? `replica ${j + 1}`;
      const url = replicaUrl(r, where, global, str, fail, env, file);
      const accessKeyId = str(r["access-key-id"], `${where}.access-key-id`) ?? global.accessKeyId;
      const secretAccessKey = str(r["secret-access-key"], `${where}.secret-access-key`) ?? global.secretAccessKey;
      const replicaEnv: Record<string, string | undefined> = { ...env };
      // Litestream's own variables work too, for a config carried over as it is.
      replicaEnv.AWS_ACCESS_KEY_ID = accessKeyId ?? env.AWS_ACCESS_KEY_ID ?? env.LITESTREAM_ACCESS_KEY_ID;
      replicaEnv.AWS_SECRET_ACCESS_KEY = secretAccessKey ?? env.AWS_SECRET_ACCESS_KEY ??
        env.LITESTREAM_SECRET_ACCESS_KEY;
      if (accessKeyId || secretAccessKey) replicaEnv.AWS_SESSION_TOKEN = undefined;
      return {
        name,
        url,
        env: replicaEnv,
        syncInterval: duration(r["sync-interval"], `${where}.sync-interval`),
        snapshotInterval: duration(r["snapshot-interval"], `${where}.snapshot-interval`),
        retention: duration(r.retention, `${where}.retention`),
      };
    });
    const metaPath = str(entry["meta-path"], `${at}.meta-path`);
    config.dbs.push({
      path: abs,
      ...(metaPath ? { cacheDir: path.resolve(path.dirname(path.resolve(file)), expandHome(metaPath, env)) } : {}),
      replicas,
    });
  });
  return config;
}

/** The replica URL of a `url:` or a `type:` entry. */
function replicaUrl(
  r: Record<string, unknown>,
  where: string,
  global: { region?: string; endpoint?: string },
  str: (v: unknown, where: string) => string | undefined,
  fail: (why: string) => WalshipError,
  env: Record<string, string | undefined>,
  file: string,
): string {
  const url = str(r.url, `${where}.url`);
  const type = str(r.type, `${where}.type`)?.toLowerCase();
  const rpath = str(r.path, `${where}.path`);
  const bucket = str(r.bucket, `${where}.bucket`);
  const region = str(r.region, `${where}.region`) ?? global.region;
  const endpoint = str(r.endpoint, `${where}.endpoint`) ?? global.endpoint;
  const fps = str(r["force-path-style"], `${where}.force-path-style`);
  if (fps !== undefined && fps !== "true" && fps !== "false") throw fail(`${where}.force-path-style must be true or false`);
  const s3Params = (base: string) => {
    const q = new URLSearchParams();
    const has = new URL(base.replace(/^s3:/, "http:")).searchParams;
    if (endpoint && !has.has("endpoint")) q.set("endpoint", endpoint);
    if (region && !has.has("region")) q.set("region", region);
    if (fps && !has.has("force-path-style")) q.set("force-path-style", fps);
    const extra = q.toString();
    return extra ? `${base}${base.includes("?") ? "&" : "?"}${extra}` : base;
  };
  if (url) {
    if (type && type !== (url.startsWith("s3:") ? "s3" : "file")) throw fail(`${where}: type ${type} does not match url`);
    return /^s3:/i.test(url) ? s3Params(url) : url;
  }
  const kind = type ?? (bucket ? "s3" : rpath ? "file" : undefined);
  if (kind === "file") {
    if (!rpath) throw fail(`${where}: a file replica needs path:`);
    return path.resolve(path.dirname(path.resolve(file)), expandHome(rpath, env));
  }
  if (kind === "s3") {
    if (!bucket) throw fail(`${where}: an s3 replica needs bucket:`);
    const prefix = (rpath ?? "").replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");
    return s3Params(`s3://${bucket}${prefix ? "/" + prefix : ""}`);
  }
  if (kind) throw fail(`${where}: replica type "${kind}" is not supported (use s3 or file)`);
  throw fail(`${where} needs url: or type:`);
}

/** `$VAR` and `${VAR}` replaced by their values (empty when unset), as Litestream does. */
export function expandEnv(text: string, env: Record<string, string | undefined>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, a, b) => env[a ?? b] ?? "");
}

function expandHome(p: string, env: Record<string, string | undefined>): string {
  return p === "~" || p.startsWith("~/") ? path.join(env.HOME ?? "", p.slice(1)) : p;
}

function isMap(v: unknown): v is Record<string, unknown> & { [k: string]: any } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The config entry for the database at `dbPath`, from `explicit` (`--config`),
 * `$WALSHIP_CONFIG` or the default file when it exists; null when there is
 * no config, or it does not list that database. An explicitly named config
 * must exist and parse.
 *
 * @example
 * ```ts
 * const entry = findDbConfig("/var/lib/app/app.db", undefined);
 * entry?.replicas.map((r) => r.url);
 * ```
 */
export function findDbConfig(
  dbPath: string,
  explicit: string | undefined,
  options: ConfigOptions = {},
): { config: Config; db: DbConfig } | null {
  const { file, named } = configPath(explicit, options.env);
  if (!named && !fs.existsSync(file)) return null;
  const config = loadConfig(file, options);
  const abs = path.resolve(dbPath);
  const db = config.dbs.find((d) => d.path === abs);
  return db ? { config, db } : null;
}
