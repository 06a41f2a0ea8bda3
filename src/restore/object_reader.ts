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

/** The payload chunks of an object streamed from `source`; throws CORRUPT on a bad hash. */
export async function* verifiedPayload(
  source: AsyncIterable<Uint8Array>,
  what: string,
  out: StreamedObject,
): AsyncGenerator<Uint8Array> {
  const hasher = createHash("sha256");
  let head: Uint8Array | null = new Uint8Array(0);
  let tail: Uint8Array = new Uint8Array(0); // the last bytes seen, which may be the trailer
  for await (const chunk of source) {
    let data = concatBytes([tail, chunk]);
    if (head !== null) {
      head = concatBytes([head, data]);
      data = new Uint8Array(0);
      tail = new Uint8Array(0);
      if (head.length < PREAMBLE_SIZE) continue;
      const metaLength = new DataView(head.buffer, head.byteOffset).getUint32(12);
      if (head.length < PREAMBLE_SIZE + metaLength + HASH_SIZE) continue;
      const { meta, payloadOffset } = decodePreamble(head, what);
      out.meta = meta;
      hasher.update(head.subarray(0, payloadOffset));
      data = head.subarray(payloadOffset);
      head = null;
    }
    if (data.length <= HASH_SIZE) {
      tail = data;
      continue;
    }
    const body = data.subarray(0, data.length - HASH_SIZE);
    tail = data.slice(data.length - HASH_SIZE);
    hasher.update(body);
    yield body;
  }
  if (head !== null || tail.length !== HASH_SIZE) {
    throw new WalshipError("CORRUPT", `${what} is truncated`);
  }
  if (!hasher.digest().equals(tail)) {
    throw new WalshipError("CORRUPT", `${what} failed its hash check (corrupted or truncated)`);
  }
}
