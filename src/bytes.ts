/**
 * Byte-array helpers shared across the engine.
 *
 * @module
 */

/**
 * `parts` joined into one array. When only one part holds bytes, that part
 * itself is returned (no copy): callers must not write into the result.
 */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  let size = 0;
  let only: Uint8Array | null = null;
  let nonEmpty = 0;
  for (const p of parts) {
    size += p.length;
    if (p.length > 0) {
      only = p;
      nonEmpty++;
    }
  }
  if (nonEmpty === 1) return only!;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** How many bytes `data` holds, whole or in parts. */
export function byteLength(data: Uint8Array | readonly { length: number }[]): number {
  if (!Array.isArray(data)) return (data as Uint8Array).length;
  let n = 0;
  for (const p of data) n += p.length;
  return n;
}
