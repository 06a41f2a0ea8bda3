/**
 * Durations as people write them: `100ms`, `1s`, `5m`, `24h` (and plain
 * milliseconds). Used by flags and options alike.
 *
 * @module
 */

import { WalshipError } from "./errors.ts";

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Milliseconds in a duration string. Throws BAD_ARGUMENT naming `what` for
 * anything else.
 *
 * @example
 * ```ts
 * parseDuration("1.5s"); // 1500
 * parseDuration("24h");  // 86400000
 * ```
 */
export function parseDuration(text: string | number, what = "duration"): number {
  if (typeof text === "number" && Number.isFinite(text) && text >= 0) return text;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(String(text));
  if (!m) {
    throw new WalshipError("BAD_ARGUMENT", `${what} "${text}" is not a duration: use e.g. 100ms, 1s, 5m, 24h`);
  }
  return Math.round(parseFloat(m[1]) * UNITS[m[2] ?? "ms"]);
}
