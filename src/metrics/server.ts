/**
 * A small HTTP server for monitoring, over `node:http` (the same code on
 * Deno and Bun):
 *
 * - `GET /metrics`: {@linkcode renderMetrics} of the current statuses, as
 *   `text/plain; version=0.0.4`.
 * - `GET /healthz`: `200 ok` when healthy, otherwise `503` and one line that
 *   says why. Healthy means: at least one database, every replicator
 *   started (it has checked the database and reached the replica once), and
 *   no replica whose latest upload attempt failed (`lastError` is set; it is
 *   cleared by the next successful upload, so a replica that recovers is
 *   healthy again). Lag alone does not make it unhealthy: alert on
 *   `walship_replication_lag_seconds` for that.
 * - `HEAD` works like `GET` without a body; any other method on those two
 *   paths is `405`; any other path is `404`.
 *
 * @module
 */

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { lookup } from "node:dns/promises";
import { isIP, type Socket } from "node:net";
import { errorMessage, WalshipError } from "../errors.ts";
import { type Log, maskText, silentLog } from "../log.ts";
import { METRICS_CONTENT_TYPE, type MetricsInput, renderMetrics, replicasOf } from "./prometheus.ts";

/** Options for {@linkcode startMetricsServer}. */
export interface MetricsServerOptions {
  /** Where failures of `source` are logged; silent by default. */
  log?: Log;
}

/** A running metrics server. */
export interface MetricsServer {
  /** The port it listens on (the one picked, when the address asked for port 0). */
  port: number;
  /** The host it listens on; "" for all interfaces. */
  host: string;
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

/** A parsed listen address: host ("" = all interfaces) and port. */
export interface ListenAddress {
  host: string;
  port: number;
}

const ADDR_FORMS = 'use "host:port", "[ipv6]:port" or ":port" (all interfaces), e.g. ":9090" or "127.0.0.1:9090"';

/**
 * Parses a listen address as Litestream and Prometheus exporters write it:
 * `host:port`, `[::1]:port`, or `:port` for all interfaces. Port 0 picks a
 * free port. Throws {@linkcode WalshipError} `BAD_ARGUMENT` otherwise.
 *
 * @example
 * ```ts
 * parseListenAddress(":9090");          // { host: "", port: 9090 }
 * parseListenAddress("127.0.0.1:9090"); // { host: "127.0.0.1", port: 9090 }
 * parseListenAddress("[::1]:0");        // { host: "::1", port: 0 }
 * ```
 */
export function parseListenAddress(addr: string): ListenAddress {
  const shown = JSON.stringify(String(addr)).slice(0, 80);
  const bad = (why: string) => new WalshipError("BAD_ARGUMENT", `metrics address ${shown}: ${why}; ${ADDR_FORMS}`);
  if (typeof addr !== "string" || addr === "") throw bad("empty");
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?)\]|([A-Za-z0-9.-]*)):([0-9]+)$/.exec(addr);
  if (!m) {
    if (/^[0-9]+$/.test(addr)) throw bad(`no host part (did you mean ":${addr}"?)`);
    if (addr.includes("://")) throw bad("no scheme or path, only host and port");
    if (!addr.includes(":")) throw bad("no port");
    if (/^[^[\]]*:[^[\]]*:/.test(addr)) throw bad("an IPv6 address needs brackets");
    const port = addr.slice(addr.lastIndexOf(":") + 1);
    if (!/^[0-9]+$/.test(port)) throw bad(port === "" ? "no port" : `port "${port}" is not a number`);
    throw bad("not host:port");
  }
  const host = m[1] ?? m[2];
  if (m[1] === undefined && host !== "" && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) {
    throw bad(`"${host}" is not a host name`);
  }
  const port = Number(m[3]);
  if (!Number.isSafeInteger(port) || port > 65535) throw bad(`port ${m[3]} is out of range (0-65535)`);
  return { host, port };
}

/**
 * Why the replication is unhealthy, in one line, or null when healthy (see
 * the module documentation for what healthy means).
 *
 * @example
 * ```ts
 * healthProblem([replicator.status()]); // null, or e.g. "/srv/app.db → s3://b/app: upload failing: …"
 * ```
 */
export function healthProblem(statuses: MetricsInput[]): string | null {
  if (statuses.length === 0) return "no database is being replicated";
  const problems: string[] = [];
  for (const s of statuses) {
    if (!s.started) {
      problems.push(`${s.db}: not started (waiting for the database, or for the replica to answer)`);
      continue;
    }
    for (const r of replicasOf(s)) {
      if (r.lastError) problems.push(`${s.db} → ${r.replica}: upload failing: ${r.lastError}`);
    }
  }
  if (problems.length === 0) return null;
  return oneLine(problems.join("; "));
}

/**
 * Starts serving `/metrics` and `/healthz` on `addr` (`host:port` or
 * `:port`). `source` is called on every request for the current statuses.
 * Throws {@linkcode WalshipError} `BAD_ARGUMENT` for a bad address, one in
 * use, or one that cannot be listened on.
 *
 * @example
 * ```ts
 * const metrics = await startMetricsServer(":9090", () => [replicator.status()]);
 * // curl http://localhost:9090/metrics
 * await metrics.close();
 * ```
 */
export async function startMetricsServer(
  addr: string,
  source: () => MetricsInput[],
  options: MetricsServerOptions = {},
): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(addr);
  const log = options.log ?? silentLog;
  const sockets = new Set<Socket>();

  // Resolved first: a runtime may report an unknown host as something else (Bun: "in use").
  if (host !== "" && isIP(host) === 0) {
    await lookup(host).catch((err) => {
      throw new WalshipError("BAD_ARGUMENT", `metrics address ${JSON.stringify(addr)}: unknown host "${host}"`, { cause: err });
    });
  }
  const server = createServer((req, res) => handle(req, res, source, log));
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => {
      server.off("listening", onListening);
      reject(listenError(addr, port, err));
    };
    const onListening = () => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    if (host === "") server.listen(port);
    else server.listen(port, host);
  });
  // Later errors on the listening socket must not crash the process.
  server.on("error", (err) => log.error(`metrics server: ${errorMessage(err)}`));

  const address = server.address();
  const bound = typeof address === "object" && address !== null ? address.port : port;
  let closing: Promise<void> | null = null;
  return {
    port: bound,
    host,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return closing;
    },
  };
}

function handle(req: IncomingMessage, res: ServerResponse, source: () => MetricsInput[], log: Log): void {
  let path: string;
  try {
    path = new URL(req.url ?? "/", "http://localhost").pathname;
  } catch {
    path = "";
  }
  const head = req.method === "HEAD";
  const send = (status: number, type: string, body: string, extra: Record<string, string> = {}) => {
    const bytes = Buffer.from(body, "utf8");
    res.writeHead(status, {
      "content-type": type,
      "content-length": String(bytes.length),
      "cache-control": "no-store",
      ...extra,
    });
    res.end(head ? undefined : bytes);
  };
  const text = "text/plain; charset=utf-8";
  if (path !== "/metrics" && path !== "/healthz") return send(404, text, "not found: try /metrics or /healthz\n");
  if (req.method !== "GET" && !head) return send(405, text, "method not allowed\n", { allow: "GET, HEAD" });

  let statuses: MetricsInput[];
  try {
    statuses = source();
  } catch (err) {
    const why = oneLine(`status unavailable: ${errorMessage(err)}`);
    log.error(`metrics server: ${why}`);
    return send(path === "/healthz" ? 503 : 500, text, why + "\n");
  }
  if (path === "/metrics") return send(200, METRICS_CONTENT_TYPE, renderMetrics(statuses));
  const problem = healthProblem(statuses);
  return problem === null ? send(200, text, "ok\n") : send(503, text, problem + "\n");
}

/** One line, with signed-URL credentials masked: it goes out over HTTP. */
function oneLine(text: string): string {
  return maskText(text).replace(/\s*[\r\n]+\s*/g, " ").trim();
}

function listenError(addr: string, port: number, err: unknown): WalshipError {
  const code = (err as { code?: string })?.code;
  const shown = JSON.stringify(addr);
  const make = (why: string, transient = false) =>
    new WalshipError("BAD_ARGUMENT", `metrics address ${shown}: ${why}`, { cause: err, transient });
  // Port 0 cannot be in use: Bun says so for other failures too.
  if (code === "EADDRINUSE" && port !== 0) {
    return make("the address is in use by another process: pick another port", true);
  }
  if (code === "EACCES" || code === "EPERM") return make("permission denied (ports below 1024 need privileges)");
  if (code === "EADDRNOTAVAIL" || code === "EINVAL" || code === "EADDRINUSE") {
    return make("cannot listen there: not an address of this machine");
  }
  if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "EAI_NONAME") return make("unknown host");
  return make(`cannot listen: ${errorMessage(err)}`);
}
