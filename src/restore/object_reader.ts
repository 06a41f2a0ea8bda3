/**
 * Reads a replica object as a stream and verifies it on the way: yields the
 * payload bytes and, at the end, checks the trailer hash over everything
 * before it. A consumer that writes what it is given must discard its output
 * when the generator throws.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { concatBytes } from "../bytes.ts";
import { WalshipError } from "../errors.ts";
import { decodePreamble, HASH_SIZE, type ObjectMeta, PREAMBLE_SIZE } from "../replica/object_format.ts";

/** Holds the metadata once the stream has delivered it. */
export interface StreamedObject {
  meta: ObjectMeta | null;
}

/**
 * The payload chunks of an object streamed from `source`; throws CORRUPT on
 * a bad hash. The trailer (the last HASH_SIZE bytes) is held back as chunks
 * come, so a chunk is yielded whole as a view, less the bytes that may be
 * the trailer, never copied (only the short tail and the preamble are).
 */
export async function* verifiedPayload(
  source: AsyncIterable<Uint8Array>,
  what: string,
  out: StreamedObject,
): AsyncGenerator<Uint8Array> {
  const hasher = createHash("sha256");
  let head: Uint8Array | null = new Uint8Array(0);
  let tail: Uint8Array = new Uint8Array(0); // the last bytes seen, fewer than HASH_SIZE + 1 of them: maybe the trailer
  const emit = (body: Uint8Array) => {
    hasher.update(body);
    return body;
  };
  for await (let chunk of source) {
    if (head !== null) {
      head = concatBytes([head, chunk]);
      if (head.length < PREAMBLE_SIZE) continue;
      const metaLength = new DataView(head.buffer, head.byteOffset).getUint32(12);
      if (head.length < PREAMBLE_SIZE + metaLength + HASH_SIZE) continue;
      const { meta, payloadOffset } = decodePreamble(head, what);
      out.meta = meta;
      hasher.update(head.subarray(0, payloadOffset));
      chunk = head.subarray(payloadOffset);
      head = null;
    }
    if (chunk.length >= HASH_SIZE) {
      // What was held back is payload after all; the new chunk's end is held back instead.
      if (tail.length > 0) yield emit(tail);
      if (chunk.length > HASH_SIZE) yield emit(chunk.subarray(0, chunk.length - HASH_SIZE));
      tail = chunk.slice(chunk.length - HASH_SIZE);
    } else {
      const joined = concatBytes([tail, chunk]);
      if (joined.length > HASH_SIZE) yield emit(joined.subarray(0, joined.length - HASH_SIZE));
      tail = joined.slice(Math.max(0, joined.length - HASH_SIZE));
    }
  }
  if (head !== null || tail.length !== HASH_SIZE) {
    throw new WalshipError("CORRUPT", `${what} is truncated`);
  }
  if (!hasher.digest().equals(tail)) {
    throw new WalshipError("CORRUPT", `${what} failed its hash check (corrupted or truncated)`);
  }
}
