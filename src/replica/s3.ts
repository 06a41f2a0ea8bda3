/**
 * A replica in an S3 bucket (AWS or any S3-compatible server), over the AWS
 * SDK v3. Large bodies go up as multipart uploads read part by part from
 * disk; listings gather every page; every failure becomes a one-line
 * {@linkcode WalshipError} naming the operation and the object, never a secret.
 *
 * @module
 */

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { type FileHandle, open } from "node:fs/promises";
import process from "node:process";
import { WalshipError } from "../errors.ts";
import { emptyStats } from "./storage.ts";
import type { ObjectInfo, PutBody, ReplicaStorage, StorageStats } from "./storage.ts";
import type { S3ReplicaUrl } from "./url.ts";

/** The buffer single puts read files into, while no put is using it. */
let spareBuffer: Uint8Array | null = null;

/** The shared buffer when it is free (grown to `size` if need be), else a fresh one. */
function takeSpare(size: number): Uint8Array {
  let buf = spareBuffer;
  spareBuffer = null;
  if (!buf || buf.length < size) buf = new Uint8Array(size);
  return buf;
}

/** Gives a buffer from {@linkcode takeSpare} back; the larger one is kept. */
function putBackSpare(buf: Uint8Array): void {
  if (!spareBuffer || spareBuffer.length < buf.length) spareBuffer = buf;
}

/** Options for {@linkcode S3Storage}. */
export interface S3StorageOptions {
  /** Credentials come from here (`AWS_ACCESS_KEY_ID`, ..., `AWS_PROFILE`); default `process.env`. */
  env?: Record<string, string | undefined>;
  /** Keys per ListObjectsV2 request (S3's maximum is 1000); small values exercise paging in tests. */
  listPageSize?: number;
  /** Milliseconds to establish a connection; default 2000. */
  connectTimeoutMs?: number;
  /** Milliseconds a connection may sit idle mid-request; default 30000. */
  idleTimeoutMs?: number;
  /** SDK attempts per request; default 3 (the replicator retries on top of this). */
  maxAttempts?: number;
}

/** Bodies up to this size go up in one PutObject; larger ones as multipart. */
export const SINGLE_PUT_LIMIT = 16 * 1024 * 1024;
const PART_CONCURRENCY = 4;
const DELETE_BATCH = 1000;

/**
 * {@linkcode ReplicaStorage} over an S3 bucket and key prefix.
 *
 * @example
 * ```ts
 * const storage = new S3Storage(parseReplicaUrl("s3://backups/app") as S3ReplicaUrl);
 * await storage.put("generations/0001/snapshot", bytes);
 * const keys = await storage.list("generations/");
 * storage.close();
 * ```
 */
export class S3Storage implements ReplicaStorage {
  readonly location: string;
  readonly stats: StorageStats = emptyStats();
  /** The SDK client, for tests and callers that need an extra middleware. */
  readonly client: S3Client;
  readonly #bucket: string;
  readonly #root: string; // "prefix/" or ""
  readonly #pageSize: number;
  readonly #where: string; // who we failed to reach, for messages
  readonly #secrets: string[];

  constructor(url: Omit<S3ReplicaUrl, "kind">, options: S3StorageOptions = {}) {
    const env = options.env ?? process.env;
    this.#bucket = url.bucket;
    this.#root = url.prefix === "" ? "" : `${url.prefix}/`;
    this.location = `s3://${url.bucket}${url.prefix === "" ? "" : `/${url.prefix}`}`;
    this.#pageSize = options.listPageSize ?? 1000;
    this.#where = url.endpoint ?? `S3 in ${url.region}`;
    const accessKeyId = env.AWS_ACCESS_KEY_ID;
    const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
    const sessionToken = env.AWS_SESSION_TOKEN || undefined;
    // Short strings would blank out ordinary words; real keys are long.
    this.#secrets = [accessKeyId, secretAccessKey, sessionToken].filter((s): s is string =>
      !!s && s.length >= 6
    );
    this.client = new S3Client({
      region: url.region,
      ...(url.endpoint !== undefined ? { endpoint: url.endpoint } : {}),
      forcePathStyle: url.forcePathStyle,
      // Keys in `env` win; otherwise the SDK's default chain (profile, SSO, IMDS...).
      ...(accessKeyId && secretAccessKey
        ? { credentials: { accessKeyId, secretAccessKey, sessionToken } }
        : {}),
      ...(env.AWS_PROFILE ? { profile: env.AWS_PROFILE } : {}),
      // Without these the SDK streams bodies with aws-chunked framing and
      // trailing checksums, which S3-compatible servers (s3rver) store verbatim.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      maxAttempts: options.maxAttempts ?? 3,
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 2_000,
        socketTimeout: options.idleTimeoutMs ?? 30_000,
      },
    });
  }

  async put(key: string, body: PutBody): Promise<void> {
    if (body instanceof Uint8Array || body.size <= SINGLE_PUT_LIMIT) {
      // A file's bytes go through one buffer shared by every put (taken while in use): a fresh
      // one per object left tens of MB of garbage behind a burst of uploads.
      const spare = body instanceof Uint8Array ? null : takeSpare(body.size);
      try {
        const bytes = body instanceof Uint8Array
          ? body
          : await this.#readFile(key, body.path, spare!.subarray(0, body.size));
        await this.#send("PUT", key, () =>
          this.client.send(
            new PutObjectCommand({
              Bucket: this.#bucket,
              Key: this.#root + key,
              Body: bytes,
              ContentLength: bytes.length,
            }),
          ));
      } finally {
        if (spare) putBackSpare(spare);
      }
    } else {
      await this.#putMultipart(key, body.path, body.size);
    }
    this.stats.puts++;
    this.stats.bytesUp += body instanceof Uint8Array ? body.length : body.size;
  }

  async get(key: string): Promise<Uint8Array> {
    const bytes = await this.#send("GET", key, async () => {
      const res = await this.client.send(
        new GetObjectCommand({ Bucket: this.#bucket, Key: this.#root + key }),
      );
      return res.Body ? await collectBody(res.Body, res.ContentLength) : new Uint8Array(0);
    });
    this.stats.gets++;
    this.stats.bytesDown += bytes.length;
    return bytes;
  }

  async getStream(key: string): Promise<AsyncIterable<Uint8Array>> {
    const res = await this.#send(
      "GET",
      key,
      () => this.client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#root + key })),
    );
    this.stats.gets++;
    const body = res.Body;
    // On Deno, Bun and Node the body is a Node Readable, itself async iterable.
    const chunks: AsyncIterable<Uint8Array> | Uint8Array[] = body === undefined
      ? []
      : Symbol.asyncIterator in body
      ? body as unknown as AsyncIterable<Uint8Array>
      : body.transformToWebStream() as unknown as AsyncIterable<Uint8Array>;
    const stats = this.stats;
    const fail = (err: unknown) => this.#error("GET", key, err);
    return (async function* () {
      try {
        for await (const chunk of chunks) {
          stats.bytesDown += chunk.length;
          yield chunk;
        }
      } catch (err) {
        throw fail(err);
      }
    })();
  }

  async list(prefix: string, options: { startAfter?: string } = {}): Promise<ObjectInfo[]> {
    const { startAfter } = options;
    const out: ObjectInfo[] = [];
    for await (const page of this.#pages(prefix, undefined, startAfter)) {
      for (const obj of page.Contents ?? []) {
        if (obj.Key === undefined) continue;
        const key = obj.Key.slice(this.#root.length);
        if (startAfter !== undefined && key <= startAfter) continue;
        out.push({ key, size: obj.Size ?? 0 });
      }
    }
    // S3 returns keys sorted, but not every S3-compatible server does.
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async listChildren(prefix: string): Promise<string[]> {
    if (prefix !== "" && !prefix.endsWith("/")) {
      throw new WalshipError("BAD_ARGUMENT", `listChildren prefix must end in "/": "${prefix}"`);
    }
    const children = new Set<string>();
    const skip = this.#root.length + prefix.length;
    for await (const page of this.#pages(prefix, "/")) {
      for (const cp of page.CommonPrefixes ?? []) {
        if (cp.Prefix) children.add(cp.Prefix.slice(skip, -1));
      }
    }
    return [...children].sort();
  }

  async delete(keys: string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      const res = await this.#send("DELETE", batch[0], () =>
        this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.#bucket,
            Delete: { Objects: batch.map((k) => ({ Key: this.#root + k })), Quiet: true },
          }),
        ));
      // DeleteObjects answers 200 and lists per-key failures in its body.
      const failed = res.Errors?.[0];
      if (failed) {
        const key = (failed.Key ?? "").slice(this.#root.length);
        throw this.#error(
          "DELETE",
          key,
          Object.assign(new Error(failed.Message ?? ""), { name: failed.Code ?? "Error" }),
        );
      }
      this.stats.deletes += batch.length;
    }
  }

  /** Closes the SDK's idle connections. */
  close(): void {
    this.client.destroy();
  }

  /** Every ListObjectsV2 page under `prefix`; counts one LIST per page. */
  async *#pages(
    prefix: string,
    delimiter?: string,
    startAfter?: string,
  ): AsyncGenerator<ListObjectsV2CommandOutput> {
    let token: string | undefined;
    do {
      const page = await this.#send("LIST", prefix, () =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            Prefix: this.#root + prefix || undefined,
            Delimiter: delimiter,
            MaxKeys: this.#pageSize,
            ContinuationToken: token,
            StartAfter: token === undefined && startAfter !== undefined
              ? this.#root + startAfter
              : undefined,
          }),
        ));
      this.stats.lists++;
      yield page;
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && !token) {
        throw new WalshipError(
          "STORAGE",
          `[LIST] ${this.#url(prefix)}: truncated listing without a continuation token`,
        );
      }
    } while (token !== undefined);
  }

  /** CreateMultipartUpload, parts read from disk a few at a time, Complete; Abort on any failure. */
  async #putMultipart(key: string, path: string, size: number): Promise<void> {
    const Key = this.#root + key;
    // S3 allows 10,000 parts; grow parts in whole MiB for huge files.
    const partSize = Math.max(SINGLE_PUT_LIMIT, Math.ceil(size / 9_000 / 1048576) * 1048576);
    const count = Math.ceil(size / partSize);
    const fh = await open(path, "r").catch((err) => {
      throw this.#readError(key, path, err);
    });
    let uploadId: string | undefined;
    try {
      const created = await this.#send(
        "PUT",
        key,
        () => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.#bucket, Key })),
      );
      uploadId = created.UploadId;
      const etags: string[] = new Array(count);
      let next = 0;
      let failure: unknown;
      const worker = async () => {
        const buf = new Uint8Array(Math.min(partSize, size));
        try {
          while (failure === undefined && next < count) {
            const i = next++;
            const len = Math.min(partSize, size - i * partSize);
            await readExactly(fh, buf.subarray(0, len), i * partSize).catch((err) => {
              throw this.#readError(key, path, err);
            });
            const res = await this.#send("PUT", key, () =>
              this.client.send(
                new UploadPartCommand({
                  Bucket: this.#bucket,
                  Key,
                  UploadId: uploadId,
                  PartNumber: i + 1,
                  Body: buf.subarray(0, len),
                  ContentLength: len,
                }),
              ));
            etags[i] = res.ETag ?? "";
          }
        } catch (err) {
          failure ??= err;
        }
      };
      // Wait for every worker before aborting: a part still in flight after
      // AbortMultipartUpload could be stored and billed.
      await Promise.all(Array.from({ length: Math.min(PART_CONCURRENCY, count) }, worker));
      if (failure !== undefined) throw failure;
      await this.#send("PUT", key, () =>
        this.client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.#bucket,
            Key,
            UploadId: uploadId,
            MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
          }),
        ));
    } catch (err) {
      if (uploadId !== undefined) {
        await this.client
          .send(new AbortMultipartUploadCommand({ Bucket: this.#bucket, Key, UploadId: uploadId }))
          .catch(() => {}); // the upload expires by lifecycle rule if this fails too
      }
      throw err;
    } finally {
      await fh.close();
    }
  }

  /** Reads a local file into `buf`, exactly its length, for a single PutObject. */
  async #readFile(key: string, path: string, buf: Uint8Array): Promise<Uint8Array> {
    try {
      const fh = await open(path, "r");
      try {
        await readExactly(fh, buf, 0);
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw this.#readError(key, path, err);
    }
    return buf;
  }

  #readError(key: string, path: string, err: unknown): WalshipError {
    const why = err instanceof Error ? err.message : String(err);
    return new WalshipError(
      "IO",
      this.#redact(`[PUT] ${this.#url(key)}: cannot read ${path}: ${why}`),
      { cause: err },
    );
  }

  async #send<T>(op: string, key: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.#error(op, key, err);
    }
  }

  #url(key: string): string {
    return key === "" ? this.location : `${this.location}/${key}`;
  }

  /** Maps an SDK or network error to a one-line WalshipError; the original stays in `cause`. */
  #error(op: string, key: string, err: unknown): WalshipError {
    if (err instanceof WalshipError) return err;
    const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const name = e?.name ?? "Error";
    const status = e?.$metadata?.httpStatusCode;
    const net = networkCode(err);
    const at = `[${op}] ${this.#url(key)}`;
    const make = (code: WalshipError["code"], text: string, transient = false) =>
      new WalshipError(code, this.#redact(`${at}: ${text}`.replace(/\s*\n\s*/g, " ")), {
        cause: err,
        transient,
      });

    if (name === "InvalidAccessKeyId" || name === "SignatureDoesNotMatch") {
      return make(
        "ACCESS_DENIED",
        `access denied (${name}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY`,
      );
    }
    if (name === "ExpiredToken" || name === "InvalidToken" || name === "TokenRefreshRequired") {
      return make("ACCESS_DENIED", `access denied (${name}): refresh the session credentials`);
    }
    if (name === "AccessDenied" || name === "AllAccessDisabled" || status === 403) {
      return make(
        "ACCESS_DENIED",
        `access denied (${name}): the credentials lack permission on bucket "${this.#bucket}"`,
      );
    }
    if (name === "NoSuchBucket") {
      return make(
        "NO_BUCKET",
        `bucket "${this.#bucket}" does not exist: create it or fix the replica URL`,
      );
    }
    if (op === "GET" && (name === "NoSuchKey" || name === "NotFound" || status === 404)) {
      return make("NOT_FOUND", "no such object");
    }
    if (net !== undefined || name === "TimeoutError") {
      return make(
        "UNREACHABLE",
        `cannot reach ${this.#where} (${net ?? name}): check the endpoint and the network`,
        true,
      );
    }
    const detail = `${name}${status ? `, HTTP ${status}` : ""}`;
    const transient = (status !== undefined && status >= 500) ||
      ["SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"].includes(name);
    return make("STORAGE", `storage error (${detail}): ${e?.message ?? String(err)}`, transient);
  }

  /** Blanks credentials and presigned-URL parameters out of a message. */
  #redact(text: string): string {
    let out = text;
    for (const s of this.#secrets) out = out.split(s).join("***");
    return out
      .replace(/(X-Amz-(?:Signature|Credential|Security-Token))=[^&\s"]*/gi, "$1=***")
      .replace(/\b(?:AKIA|ASIA)[A-Z0-9]{16}\b/g, "***");
  }
}

const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE",
  "ECONNABORTED",
  "UND_ERR_SOCKET",
  "ConnectionRefused", // Bun
  "ConnectionClosed", // Bun
]);

/** The network error code anywhere in `err`'s cause chain (or an AggregateError's members). */
function networkCode(err: unknown, depth = 0): string | undefined {
  if (err === null || typeof err !== "object" || depth > 4) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && NETWORK_CODES.has(code)) return code;
  for (const inner of (err as { errors?: unknown[] }).errors ?? []) {
    const found = networkCode(inner, depth + 1);
    if (found) return found;
  }
  return networkCode((err as { cause?: unknown }).cause, depth + 1);
}

/** Fills `buf` from `fh` at `position`; a file that ends early is an error. */
async function readExactly(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      throw new Error(
        `file ends at byte ${position + done}, expected at least ${position + buf.length}`,
      );
    }
    done += bytesRead;
  }
}

/**
 * An object's body as one array. With the length the response declares,
 * the chunks are copied into one buffer of that size as they arrive: the
 * SDK's `transformToByteArray` keeps every chunk and then joins them, which
 * allocates each byte twice (a restore's large segments made most of its
 * page faults there).
 */
async function collectBody(
  body: { transformToByteArray(): Promise<Uint8Array> },
  length: number | undefined,
): Promise<Uint8Array> {
  if (length === undefined || !(Symbol.asyncIterator in body)) return await body.transformToByteArray();
  const out = new Uint8Array(length);
  let at = 0;
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    if (at + chunk.length > length) throw new Error(`the body is longer than its Content-Length ${length}`);
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== length) throw new Error(`the body ended after ${at} of its ${length} bytes`);
  return out;
}
