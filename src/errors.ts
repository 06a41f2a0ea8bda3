/**
 * The error type of walship. Every failure a user can act on is a
 * {@linkcode WalshipError} whose message is one line that says what was wrong
 * and, where there is one, what to do. The CLI prints `walship: <message>`
 * for these and never a stack trace.
 *
 * @module
 */

/** What kind of failure a {@linkcode WalshipError} reports; stable, for programs. */
export type ErrorCode =
  | "NOT_SQLITE" // a file that is not a SQLite database
  | "NOT_WAL" // a database not in WAL mode where one is required
  | "CORRUPT" // bytes that fail a format or checksum test
  | "NOT_FOUND" // a file or object that does not exist
  | "EXISTS" // a target that exists and must not be overwritten
  | "ACCESS_DENIED" // wrong credentials or permissions
  | "NO_BUCKET" // the bucket does not exist
  | "UNREACHABLE" // the endpoint does not answer
  | "BAD_URL" // a replica URL that cannot be parsed
  | "BAD_ARGUMENT" // a flag or option with a bad value
  | "BAD_CONFIG" // a config file that cannot be read or makes no sense
  | "NO_BACKUP" // the replica holds nothing to restore
  | "GAP" // the replica misses objects between a snapshot and a target
  | "IO" // a local file system failure (full disk, permissions)
  | "STORAGE"; // any other storage failure

/** An expected failure, with a one-line message a person can act on. */
export class WalshipError extends Error {
  /** Stable code for programs. */
  readonly code: ErrorCode;
  /** True when trying the same operation again later may succeed. */
  readonly transient: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; transient?: boolean } = {}) {
    super(message, { cause: options.cause });
    this.name = "WalshipError";
    this.code = code;
    this.transient = options.transient ?? false;
  }
}

/** The message of any thrown value, on one line. */
export function errorMessage(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s*\n\s*/g, " ").trim();
}
