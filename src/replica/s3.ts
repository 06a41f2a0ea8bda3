/**
 * A replica in an S3 bucket (AWS or any S3-compatible server), over the AWS
 * SDK v3. File bodies are streamed from disk, in one PUT or, when large, as
 * multipart uploads; listings gather every page; every failure becomes a one-line
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
import { Buffer } from "node:buffer";
import fs from "node:fs";
import { Readable } from "node:stream";
import process from "node:process";
import { WalshipError } from "../errors.ts";
import { emptyStats } from "./storage.ts";
import type { ObjectInfo, PutBody, ReplicaStorage, StorageStats } from "./storage.ts";
import type { S3ReplicaUrl } from "./url.ts";

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
  /** File bodies larger than this go up as multipart uploads; default {@linkcode SINGLE_PUT_LIMIT}. */
  multipartThreshold?: number;
}

/**
 * File bodies up to this size go up in one PutObject, larger ones as
 * multipart uploads (S3 takes at most 5 GiB in one PUT). Either way the
 * file is read as the request sends it, a quarter MiB at a time: reading
 * whole objects or 16 MiB parts into memory made a burst's uploads the
 * largest part of replicate's peak memory (docs/DECISIONS.md, "Replicate
 * reuses its memory").
 */
export const SINGLE_PUT_LIMIT = 256 * 1024 * 1024;
/** Smallest part of a multipart upload (S3's minimum is 5 MiB). */
const PART_SIZE = 16 * 1024 * 1024;
const PART_CONCURRENCY = 4;
/** Bytes a file body reads at a time. */
const BODY_CHUNK = 256 * 1024;
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
  readonly #maxAttempts: number;
  readonly #multipartThreshold: number;

  constructor(url: Omit<S3ReplicaUrl, "kind">, options: S3StorageOptions = {}) {
    const env = options.env ?? process.env;
    this.#bucket = url.bucket;
    this.#root = url.prefix === "" ? "" : `${url.prefix}/`;
    this.location = `s3://${url.bucket}${url.prefix === "" ? "" : `/${url.prefix}`}`;
    this.#pageSize = options.listPageSize ?? 1000;
    this.#maxAttempts = options.maxAttempts ?? 3;
    this.#multipartThreshold = options.multipartThreshold ?? SINGLE_PUT_LIMIT;
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
      maxAttempts: this.#maxAttempts,
      // The SDK never retries a streamed body (the uploader does); without a
      // logger of its own it says so on the console each time.
      logger: QUIET_LOGGER,
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 2_000,
        socketTimeout: options.idleTimeoutMs ?? 30_000,
      },
    });
  }

  async put(key: string, body: PutBody): Promise<void> {
    const Bucket = this.#bucket;
    const Key = this.#root + key;
    if (body instanceof Uint8Array) {
      await this.#send("PUT", key, () =>
        this.client.send(new PutObjectCommand({ Bucket, Key, Body: body, ContentLength: body.length })));
    } else if (body.size <= this.#multipartThreshold) {
      await this.#sendFile(key, body.path, 0, body.size, (Body, abortSignal) =>
        this.client.send(new PutObjectCommand({ Bucket, Key, Body, ContentLength: body.size }), { abortSignal }));
    } else {
      await this.#putMultipart(key, body.path, body.size);
    }
    this.stats.puts++;
    this.stats.bytesUp += body instanceof Uint8Array ? body.length : body.size;
  }

  /**
   * Sends `length` bytes of the file at `path`, from `start`, as the body of
   * the request `send` makes, read as it goes. A file that cannot be read or
   * ends early aborts the request with an IO error naming the file.
   */
  async #sendFile<T>(
    key: string,
    path: string,
    start: number,
    length: number,
    send: (body: Readable, abortSignal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    let body: FileSlice;
    try {
      body = new FileSlice(path, start, length);
    } catch (err) {
      throw this.#readError(key, path, err);
    }
    if (body.fileSize < start + length) {
      // Checked first: a request whose body stops short is not reliably refused (s3rver stores it).
      body.destroy();
      throw new WalshipError("IO", this.#redact(`[PUT] ${this.#url(key)}: ${path} holds ${body.fileSize} bytes, expected ${start + length}`));
    }
    const abort = new AbortController();
    let readFailure: unknown;
    body.once("error", (err) => {
      readFailure ??= err;
      abort.abort(err);
    });
    try {
      return await send(body, abort.signal);
    } catch (err) {
      throw readFailure !== undefined ? this.#readError(key, path, readFailure) : this.#error("PUT", key, err);
    } finally {
      body.destroy();
    }
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

  /**
   * CreateMultipartUpload, parts streamed from disk a few at a time (each
   * tried up to maxAttempts times: the SDK does not retry streamed bodies),
   * Complete; Abort on any failure.
   */
  async #putMultipart(key: string, path: string, size: number): Promise<void> {
    const Bucket = this.#bucket;
    const Key = this.#root + key;
    // S3 allows 10,000 parts; grow parts in whole MiB for huge files.
    const partSize = Math.max(PART_SIZE, Math.ceil(size / 9_000 / 1048576) * 1048576);
    const count = Math.ceil(size / partSize);
    let uploadId: string | undefined;
    try {
      const created = await this.#send("PUT", key, () => this.client.send(new CreateMultipartUploadCommand({ Bucket, Key })));
      uploadId = created.UploadId;
      const etags: string[] = new Array(count);
      let next = 0;
      let failure: unknown;
      const worker = async () => {
        try {
          while (failure === undefined && next < count) {
            const i = next++;
            const length = Math.min(partSize, size - i * partSize);
            for (let attempt = 1;; attempt++) {
              try {
                const res = await this.#sendFile(key, path, i * partSize, length, (Body, abortSignal) =>
                  this.client.send(
                    new UploadPartCommand({ Bucket, Key, UploadId: uploadId, PartNumber: i + 1, Body, ContentLength: length }),
                    { abortSignal },
                  ));
                etags[i] = res.ETag ?? "";
                break;
              } catch (err) {
                if (attempt >= this.#maxAttempts || !(err instanceof WalshipError && err.transient)) throw err;
                await new Promise((r) => setTimeout(r, 200 * attempt));
              }
            }
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
            Bucket,
            Key,
            UploadId: uploadId,
            MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
          }),
        ));
    } catch (err) {
      if (uploadId !== undefined) {
        await this.client
          .send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId: uploadId }))
          .catch(() => {}); // the upload expires by lifecycle rule if this fails too
      }
      throw err;
    }
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

/** The SDK's logger: silent (walship reports failures itself, one line each). */
const QUIET_LOGGER = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };

/**
 * `length` bytes of a file from `start`, as a stream read {@linkcode BODY_CHUNK}
 * at a time. A file that ends early is an error, not a short body.
 */
class FileSlice extends Readable {
  #fd: number;
  #position: number;
  #left: number;
  readonly #end: number;
  #reading = false;
  #closeWhenRead: (() => void) | null = null;
  /** The file's size when it was opened. */
  readonly fileSize: number;

  constructor(path: string, start: number, length: number) {
    super({ highWaterMark: BODY_CHUNK });
    this.#fd = fs.openSync(path, "r");
    this.fileSize = fs.fstatSync(this.#fd).size;
    this.#position = start;
    this.#left = length;
    this.#end = start + length;
  }

  override _read(): void {
    const want = Math.min(BODY_CHUNK, this.#left);
    if (want === 0) {
      this.push(null);
      return;
    }
    const buf = Buffer.allocUnsafe(want);
    this.#reading = true;
    fs.read(this.#fd, buf, 0, want, this.#position, (err, got) => {
      this.#reading = false;
      if (this.#closeWhenRead) return this.#closeWhenRead();
      if (err) return void this.destroy(err);
      if (got === 0) {
        return void this.destroy(new Error(`file ends at byte ${this.#position}, expected at least ${this.#end}`));
      }
      this.#position += got;
      this.#left -= got;
      this.push(got < want ? buf.subarray(0, got) : buf);
    });
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const fd = this.#fd;
    this.#fd = -1;
    if (fd < 0) return callback(err);
    const close = () => fs.close(fd, () => callback(err));
    // Not while a read is in flight: the descriptor's number could be reused under it.
    if (this.#reading) this.#closeWhenRead = close;
    else close();
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
