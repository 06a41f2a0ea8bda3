/**
 * Logging, through tslog: readable lines on a terminal, JSON lines
 * otherwise, always on stderr (stdout belongs to command output). Code
 * takes a {@linkcode Log}, so tests hand in one that records.
 *
 * @module
 */

import { Logger } from "tslog";

/** Fields attached to a log line. */
export type LogFields = Record<string, unknown>;

/** What walship logs through. */
export interface Log {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

/** Levels by name, as `--log-level` takes them. */
export const LOG_LEVELS = { debug: 2, info: 3, warn: 4, error: 5 } as const;
export type LogLevel = keyof typeof LOG_LEVELS;

/** Options for {@linkcode createLog}. */
export interface LogOptions {
  level?: LogLevel;
  /** "pretty" on a terminal and "json" otherwise, unless set here or in WALSHIP_LOG_FORMAT. */
  format?: "pretty" | "json";
  /** Where rendered lines go; default stderr. */
  write?: (line: string) => void;
}

// Never let a credential reach a log line, whatever a caller passes in.
const SECRET_KEYS = ["secretAccessKey", "sessionToken", "accessKeyId", "authorization", "password", "secret"];
const SECRET_PATTERNS = [/X-Amz-(Signature|Credential|Security-Token)=[^&\s"]+/gi];

/**
 * A logger writing to stderr.
 *
 * @example
 * ```ts
 * const log = createLog({ level: "info" });
 * log.warn("replica unreachable, retrying", { replica: "s3://bucket/app" });
 * ```
 */
export function createLog(options: LogOptions = {}): Log {
  const env = process.env.WALSHIP_LOG_FORMAT;
  const format = options.format ?? (env === "json" || env === "pretty" ? env : process.stderr.isTTY ? "pretty" : "json");
  const write = options.write ?? ((line: string) => void process.stderr.write(line.endsWith("\n") ? line : line + "\n"));
  const logger = new Logger<LogFields>({
    type: "hidden",
    name: "walship",
    minLevel: LOG_LEVELS[options.level ?? "info"],
    mask: { keys: SECRET_KEYS, caseInsensitive: true, regex: SECRET_PATTERNS },
    pretty: { template: "{{yyyy}}-{{mm}}-{{dd}} {{hh}}:{{MM}}:{{ss}} {{logLevelName}}\t", style: false },
    stack: { capture: "off" },
  });
  logger.attachTransport({ format, write: (_record: unknown, line: string) => write(line) });
  const at = (level: "debug" | "info" | "warn" | "error") => (message: string, fields?: LogFields) => {
    const text = maskText(message);
    if (!fields) logger[level](text);
    else if (format === "json") logger[level](text, maskFields(fields));
    else logger[level](`${text} ${inline(maskFields(fields))}`);
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** Fields with secret-looking keys and values replaced. */
export function maskFields(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [k, v] of Object.entries(fields)) {
    out[k] = SECRET_KEYS.some((s) => s.toLowerCase() === k.toLowerCase())
      ? "[***]"
      : typeof v === "string"
      ? maskText(v)
      : v;
  }
  return out;
}

/** Text with signed-URL credentials replaced. */
export function maskText(text: string): string {
  return SECRET_PATTERNS.reduce((t, re) => t.replace(re, "[***]"), text);
}

function inline(fields: LogFields): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`)
    .join(" ");
}

/** A logger that drops everything. */
export const silentLog: Log = { debug() {}, info() {}, warn() {}, error() {} };
