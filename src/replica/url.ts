/**
 * Parses replica URLs: `s3://bucket/prefix?endpoint=...&region=...&force-path-style=...`,
 * `file:///abs/dir`, or a plain directory path. Pure: the environment is
 * passed in, nothing is read or opened.
 *
 * @module
 */

import { isAbsolute, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { WalshipError } from "../errors.ts";

/** Where an S3 replica lives. */
export interface S3ReplicaUrl {
  kind: "s3";
  bucket: string;
  /** Key prefix without leading or trailing `/`; may be empty. */
  prefix: string;
  /** Custom endpoint (`http(s)://host[:port]`), absent for AWS itself. */
  endpoint?: string;
  region: string;
  /** Address buckets as `endpoint/bucket` rather than `bucket.endpoint`. */
  forcePathStyle: boolean;
}

/** Where a directory replica lives. */
export interface FileReplicaUrl {
  kind: "file";
  /** Absolute, normalized directory path. */
  dir: string;
}

/** A parsed replica URL. */
export type ReplicaUrl = S3ReplicaUrl | FileReplicaUrl;

const FORMS =
  "expected s3://bucket[/prefix][?endpoint=URL&region=R&force-path-style=true|false], file:///abs/dir or a directory path";
const S3_PARAMS = new Set(["endpoint", "region", "force-path-style"]);
// Bucket rules are looser than AWS's own so S3-compatible stores still work.
const BUCKET = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;

/**
 * Parses a replica URL. Region and endpoint fall back to the environment
 * (`AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).
 * Throws {@linkcode WalshipError} `BAD_URL` for anything else.
 *
 * @example
 * ```ts
 * parseReplicaUrl("s3://backups/app/db?endpoint=http://127.0.0.1:9000");
 * // { kind: "s3", bucket: "backups", prefix: "app/db", endpoint: "http://127.0.0.1:9000",
 * //   region: "us-east-1", forcePathStyle: true }
 * parseReplicaUrl("/var/backups/db"); // { kind: "file", dir: "/var/backups/db" }
 * ```
 */
export function parseReplicaUrl(
  url: string,
  env: Record<string, string | undefined> = process.env,
): ReplicaUrl {
  // Two or more letters before ":" look like a scheme (a typo like `s3:/b`
  // must not quietly become a local directory named "s3:").
  const m = /^([A-Za-z][A-Za-z0-9+.-]+):(\/\/)?/.exec(url);
  const scheme = m?.[1].toLowerCase();
  if (scheme === "s3") {
    if (!m?.[2]) throw bad(url, `"s3:" must be followed by "//"`);
    return parseS3(url, env);
  }
  if (scheme === "file") return parseFile(url);
  if (scheme !== undefined) throw bad(url, `unknown scheme "${scheme}:"`);
  if (url.trim() === "") throw bad(url, "empty");
  return { kind: "file", dir: resolve(process.cwd(), url) };
}

function parseS3(url: string, env: Record<string, string | undefined>): S3ReplicaUrl {
  const m = /^s3:\/\/([^/?#]*)([^?#]*)(\?[^#]*)?$/i.exec(url);
  if (!m) throw bad(url, "a fragment (#) is not allowed");
  const [, bucket, path, query] = m;
  if (bucket === "") throw bad(url, "no bucket");
  if (!BUCKET.test(bucket)) {
    throw bad(url, `"${bucket.includes("@") ? "…@" : bucket}" is not a bucket name`);
  }
  let prefix: string;
  try {
    prefix = decodeURIComponent(path).replace(/^\/+|\/+$/g, "");
  } catch {
    throw bad(url, "bad percent-encoding in the prefix");
  }

  const params = new URLSearchParams(query ?? "");
  for (const name of params.keys()) {
    if (!S3_PARAMS.has(name)) throw bad(url, `unknown parameter "${name}"`);
  }
  const endpoint = params.get("endpoint") ?? nonEmpty(env.AWS_ENDPOINT_URL_S3) ??
    nonEmpty(env.AWS_ENDPOINT_URL);
  if (endpoint !== undefined) checkEndpoint(url, endpoint);
  const region = params.get("region") || nonEmpty(env.AWS_REGION) ||
    nonEmpty(env.AWS_DEFAULT_REGION) || "us-east-1";
  const fps = params.get("force-path-style");
  if (fps !== null && fps !== "true" && fps !== "false") {
    throw bad(url, `force-path-style must be true or false, not "${fps}"`);
  }
  // Custom endpoints (MinIO, s3rver, R2...) rarely have per-bucket DNS names.
  const forcePathStyle = fps === null ? endpoint !== undefined : fps === "true";
  return {
    kind: "s3",
    bucket,
    prefix,
    ...(endpoint !== undefined ? { endpoint: endpoint.replace(/\/+$/, "") } : {}),
    region,
    forcePathStyle,
  };
}

function parseFile(url: string): FileReplicaUrl {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw bad(url, "not a valid file URL");
  }
  if (parsed.search || parsed.hash) throw bad(url, "file URLs take no query or fragment");
  if (parsed.host !== "" && parsed.host !== "localhost") {
    throw bad(url, "file URLs must be local (file:///dir)");
  }
  const dir = fileURLToPath(parsed);
  if (!isAbsolute(dir)) throw bad(url, "not an absolute path");
  return { kind: "file", dir: resolve(dir) };
}

function checkEndpoint(url: string, endpoint: string): void {
  let parsed: URL;
  try {
    parsed = new URL(endpoint);
  } catch {
    throw bad(url, "endpoint must be an http:// or https:// URL");
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw bad(url, "endpoint must be an http:// or https:// URL");
  }
  // Credentials in an endpoint would end up in messages and logs.
  if (parsed.username || parsed.password) throw bad(url, "endpoint must not hold credentials");
  if (parsed.search || parsed.hash) throw bad(url, "endpoint must not have a query or fragment");
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}

/** A BAD_URL error that shows the URL without its query or any user info. */
function bad(url: string, why: string): WalshipError {
  const shown = url.replace(/#.*$/s, "#…").replace(/\?.*$/s, "?…").replace(/\/\/[^/?#]*@/, "//…@")
    .replace(/\s+/g, " ");
  return new WalshipError("BAD_URL", `bad replica URL "${shown}": ${why}; ${FORMS}`);
}
