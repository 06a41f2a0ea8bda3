/**
 * Replicator status as Prometheus metrics: text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/). Pure: a
 * list of statuses in, one string out, nothing read or opened.
 *
 * Families (every name starts with `walship_`):
 *
 * | family | type | labels |
 * |---|---|---|
 * | `walship_up` | gauge, always 1 | |
 * | `walship_build_info` | gauge, always 1 | `version` |
 * | `walship_txid` | gauge: last txid captured locally | `db` |
 * | `walship_snapshots_total` | counter | `db` |
 * | `walship_segments_total` | counter | `db` |
 * | `walship_heals_total` | counter | `db` |
 * | `walship_repairs_total` | counter: new generations after lost continuity | `db` |
 * | `walship_wal_size_bytes` | gauge | `db` |
 * | `walship_pinned` | gauge, 0 or 1 | `db` |
 * | `walship_replicated_txid` | gauge: last txid known to be in the replica | `db`, `replica` |
 * | `walship_replication_lag_seconds` | gauge | `db`, `replica` |
 * | `walship_pending_bytes` | gauge: waiting in the local cache for this replica | `db`, `replica` |
 * | `walship_pending_objects` | gauge | `db`, `replica` |
 * | `walship_uploads_total` | counter | `db`, `replica` |
 * | `walship_upload_errors_total` | counter | `db`, `replica` |
 *
 * @example
 * ```ts
 * const text = renderMetrics([replicator.status()]);
 * // # HELP walship_txid Last transaction id captured locally.
 * // # TYPE walship_txid gauge
 * // walship_txid{db="/srv/app.db"} 1234
 * ```
 *
 * @module
 */

import type { ReplicaStatus, ReplicatorStatus } from "../replicate/replicator.ts";
import { VERSION } from "../version.ts";

/** One replica's share of a replicator's status. */
export type MetricsReplicaInput = ReplicaStatus;

/** What the metrics are rendered from: `Replicator.status()`. */
export type MetricsInput = ReplicatorStatus;

/** The Content-Type of {@linkcode renderMetrics}'s output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Record<string, string>;
/** A replica as the metrics see it: the upload count may be unknown. */
export type ReplicaRow = Omit<MetricsReplicaInput, "uploads"> & { uploads?: number };
type Sample = { labels: Labels; value: number };

interface Family {
  name: string;
  type: "gauge" | "counter";
  help: string;
  samples: (statuses: MetricsInput[]) => Sample[];
}

const perDb = (value: (s: MetricsInput) => number) => (statuses: MetricsInput[]): Sample[] =>
  statuses.map((s) => ({ labels: { db: s.db }, value: value(s) }));

const perReplica = (value: (r: ReplicaRow) => number | undefined) => (statuses: MetricsInput[]): Sample[] =>
  statuses.flatMap((s) =>
    replicasOf(s).flatMap((r) => {
      const v = value(r);
      return v === undefined ? [] : [{ labels: { db: s.db, replica: r.replica }, value: v }];
    })
  );

const FAMILIES: Family[] = [
  { name: "walship_up", type: "gauge", help: "1 while walship runs and serves metrics.", samples: () => [{ labels: {}, value: 1 }] },
  {
    name: "walship_build_info",
    type: "gauge",
    help: "Always 1; the version label says which walship this is.",
    samples: () => [{ labels: { version: VERSION }, value: 1 }],
  },
  { name: "walship_txid", type: "gauge", help: "Last transaction id captured locally.", samples: perDb((s) => s.txid) },
  { name: "walship_snapshots_total", type: "counter", help: "Snapshots taken.", samples: perDb((s) => s.snapshots) },
  { name: "walship_segments_total", type: "counter", help: "Segments (batches of transactions) built.", samples: perDb((s) => s.segments) },
  {
    name: "walship_heals_total",
    type: "counter",
    help: "Heals: changed pages shipped because continuity with the WAL could not be proven.",
    samples: perDb((s) => s.heals),
  },
  {
    name: "walship_repairs_total",
    type: "counter",
    help: "New generations started because continuity with the WAL was lost.",
    samples: perDb((s) => s.repairs),
  },
  { name: "walship_wal_size_bytes", type: "gauge", help: "Size of the database's -wal file.", samples: perDb((s) => s.walSize) },
  {
    name: "walship_pinned",
    type: "gauge",
    help: "1 when walship holds a read slot so the WAL cannot restart unread, 0 otherwise.",
    samples: perDb((s) => (s.pinned ? 1 : 0)),
  },
  {
    name: "walship_replicated_txid",
    type: "gauge",
    help: "Last transaction id known to be in the replica.",
    samples: perReplica((r) => r.uploadedTxid),
  },
  {
    name: "walship_replication_lag_seconds",
    type: "gauge",
    help: "How long the oldest transaction not yet in the replica has been waiting (0 when caught up).",
    samples: perReplica((r) => r.lagSeconds),
  },
  {
    name: "walship_pending_bytes",
    type: "gauge",
    help: "Bytes waiting in the local cache for upload to the replica.",
    samples: perReplica((r) => r.pendingBytes),
  },
  {
    name: "walship_pending_objects",
    type: "gauge",
    help: "Objects waiting in the local cache for upload to the replica.",
    samples: perReplica((r) => r.pendingObjects),
  },
  { name: "walship_uploads_total", type: "counter", help: "Objects uploaded to the replica.", samples: perReplica((r) => r.uploads) },
  {
    name: "walship_upload_errors_total",
    type: "counter",
    help: "Failed upload attempts to the replica (each is retried).",
    samples: perReplica((r) => r.uploadErrors),
  },
];

/** The names of every family {@linkcode renderMetrics} writes, in order. */
export const METRIC_FAMILIES: readonly string[] = FAMILIES.map((f) => f.name);

/**
 * The replicas of a status. A status without a `replicas` list (one
 * replica, reported at the top level) stands for its single replica; its
 * upload count is then unknown and left out.
 */
export function replicasOf(s: MetricsInput): ReplicaRow[] {
  if (Array.isArray(s.replicas) && s.replicas.length > 0) return s.replicas;
  return [{
    replica: s.replica,
    uploadedTxid: s.uploadedTxid,
    pendingObjects: s.pendingObjects,
    pendingBytes: s.pendingBytes,
    uploadErrors: s.uploadErrors,
    lastError: s.lastError,
    lagSeconds: s.lagSeconds,
  }];
}

/**
 * Renders statuses as Prometheus text exposition format 0.0.4: for every
 * family one `# HELP` and one `# TYPE` line, then its samples; a family
 * with no sample (no database yet) keeps only those two lines. Ends with a
 * newline.
 *
 * @example
 * ```ts
 * res.writeHead(200, { "content-type": METRICS_CONTENT_TYPE });
 * res.end(renderMetrics([replicator.status()]));
 * ```
 */
export function renderMetrics(statuses: MetricsInput[]): string {
  const lines: string[] = [];
  for (const f of FAMILIES) {
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`);
    lines.push(`# TYPE ${f.name} ${f.type}`);
    for (const { labels, value } of f.samples(statuses)) {
      lines.push(`${f.name}${formatLabels(labels)} ${formatValue(value)}`);
    }
  }
  return lines.join("\n") + "\n";
}

/** `{a="x",b="y"}`, or "" for no labels. */
function formatLabels(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

/** A label value with `\`, `"` and newline escaped, as the format requires. */
export function escapeLabelValue(value: string): string {
  return String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** HELP text with `\` and newline escaped. */
function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** A sample value: integers and floats as JavaScript prints them, `NaN`, `+Inf`, `-Inf`. */
export function formatValue(value: number): string {
  if (typeof value !== "number" || Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}
