/**
 * Opens the replica a URL names: `s3://...` gives an {@linkcode S3Storage},
 * `file:///dir` or a plain path a {@linkcode FileStorage}.
 *
 * @module
 */

import { FileStorage } from "./file.ts";
import { S3Storage } from "./s3.ts";
import type { ReplicaStorage } from "./storage.ts";
import { parseReplicaUrl } from "./url.ts";

/** Options for {@linkcode openReplica}. */
export interface OpenReplicaOptions {
  /** Environment for region, endpoint and credentials; default `process.env`. */
  env?: Record<string, string | undefined>;
  /** Keys per S3 listing request; small values exercise paging in tests. */
  listPageSize?: number;
}

/**
 * Parses `url` and builds its storage. Nothing is contacted yet, so a bad
 * URL fails here (`BAD_URL`) and a bad bucket or credentials on first use.
 *
 * @example
 * ```ts
 * const replica = openReplica("s3://backups/app?endpoint=http://127.0.0.1:9000");
 * replica.location; // "s3://backups/app"
 * const local = openReplica("/var/backups/app");
 * local.location; // "file:///var/backups/app"
 * ```
 */
export function openReplica(url: string, options: OpenReplicaOptions = {}): ReplicaStorage {
  const parsed = parseReplicaUrl(url, options.env);
  if (parsed.kind === "file") return new FileStorage(parsed.dir);
  return new S3Storage(parsed, { env: options.env, listPageSize: options.listPageSize });
}
