/**
 * A one-line progress bar on stderr for long commands (restore, snapshot of
 * a large database): bytes done of the total, rate and ETA, redrawn in place
 * with `\r` at most ~10 times a second and ended with a newline (nothing at
 * all for a run shorter than ~0.3 s). Only drawn
 * on a terminal: {@linkcode createProgress} returns null otherwise, so piped
 * or logged output gets nothing extra. The formatting functions are pure and
 * exported for tests.
 *
 * @module
 */

/** Where a progress bar draws: a stream with `write`, and whether it is a terminal. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** A progress bar: `update` as bytes go by, `finish` once at the end. */
export interface Progress {
  /** Records `done` of `total` bytes; redraws when the last draw is old enough. */
  update(done: number, total: number): void;
  /** Draws the final state (when anything was drawn) and ends the line. Idempotent. */
  finish(): void;
}

/** Options for {@linkcode createProgress}. */
export interface ProgressOptions {
  /** What the bar is doing, e.g. "restoring". */
  label: string;
  /** Default: process.stderr. */
  stream?: ProgressStream;
  /** Milliseconds between redraws; default 100 (10 per second). */
  intervalMs?: number;
  /** Milliseconds before the first draw, so quick runs print nothing; default 300. */
  delayMs?: number;
  /** Clock, for tests; default Date.now. */
  now?: () => number;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/**
 * Bytes in binary units, three significant digits: `512 B`, `1.5 KiB`,
 * `10.0 MiB`, `123 GiB`.
 *
 * @example
 * ```ts
 * formatBytes(1536); // "1.5 KiB"
 * ```
 */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return "? B";
  if (n < 1024) return `${Math.round(n)} B`;
  let u = 0;
  let v = n;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  // 1023.96 KiB would print as "1024 KiB"; show it as the next unit instead.
  if (v >= 1023.95 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v < 100 ? v.toFixed(1) : Math.round(v).toString()} ${UNITS[u]}`;
}

/**
 * A rate in bytes per second: `12.3 MiB/s`; `-` when not known yet.
 *
 * @example
 * ```ts
 * formatRate(3 * 1024 * 1024); // "3.0 MiB/s"
 * ```
 */
export function formatRate(bytesPerSecond: number): string {
  if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) return "- B/s";
  return `${formatBytes(bytesPerSecond)}/s`;
}

/**
 * Remaining time: `42s`, `3m05s`, `1h02m`; `--` when not known.
 *
 * @example
 * ```ts
 * formatEta(185); // "3m05s"
 * ```
 */
export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--";
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 100 * 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return ">99h";
}

/**
 * The progress line for `done` of `total` bytes after `elapsedMs`, e.g.
 * `restoring [########------------]  40%  410 MiB / 1.0 GiB  52.1 MiB/s  ETA 12s`.
 * With an unknown total (0), no bar, percentage or ETA.
 *
 * @example
 * ```ts
 * formatProgressLine("restoring", 512, 1024, 1000); // "restoring [##########----------]  50%  512 B / 1.0 KiB  512 B/s  ETA 1s"
 * ```
 */
export function formatProgressLine(label: string, done: number, total: number, elapsedMs: number, width = 20): string {
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : NaN;
  if (!(total > 0)) return `${label} ${formatBytes(done)}  ${formatRate(rate)}`;
  const fraction = Math.min(1, Math.max(0, done / total));
  const filled = Math.floor(fraction * width);
  const bar = "#".repeat(filled) + "-".repeat(width - filled);
  const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
  const eta = done >= total ? "0s" : formatEta(rate > 0 ? (total - done) / rate : NaN);
  return `${label} [${bar}] ${percent}  ${formatBytes(done)} / ${formatBytes(total)}  ${formatRate(rate)}  ETA ${eta}`;
}

/**
 * A progress bar on `stream` (stderr by default), or null when the stream
 * is not a terminal: callers pass `progress?.update` along and print
 * nothing extra otherwise.
 *
 * @example
 * ```ts
 * const progress = createProgress({ label: "restoring" });
 * try {
 *   await restoreDatabase({ storage, output, onProgress: progress?.update });
 * } finally {
 *   progress?.finish();
 * }
 * ```
 */
export function createProgress(options: ProgressOptions): Progress | null {
  const stream = options.stream ?? process.stderr;
  if (!stream.isTTY) return null;
  const now = options.now ?? Date.now;
  const interval = options.intervalMs ?? 100;
  const start = now();
  let lastDraw = start + (options.delayMs ?? 300) - interval;
  let lastLength = 0;
  let drawn = false;
  let stale = false; // updated since the last draw
  let finished = false;
  let done = 0;
  let total = 0;
  const draw = () => {
    let line = formatProgressLine(options.label, done, total, now() - start);
    const columns = stream.columns ?? 0;
    if (columns > 1 && line.length >= columns) line = line.slice(0, columns - 1);
    // Pad over what a longer previous line left behind.
    stream.write(`\r${line}${" ".repeat(Math.max(0, lastLength - line.length))}`);
    lastLength = line.length;
    drawn = true;
    stale = false;
  };
  return {
    update(d: number, t: number) {
      if (finished) return;
      done = d;
      total = t;
      stale = true;
      const at = now();
      if (at - lastDraw < interval) return;
      lastDraw = at;
      draw();
    },
    finish() {
      if (finished) return;
      finished = true;
      if (!drawn) return;
      if (stale) draw();
      stream.write("\n");
    },
  };
}
