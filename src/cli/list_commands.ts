/**
 * `walship generations` and `walship snapshots`: what a replica holds.
 *
 * @module
 */

import type { CAC } from "cac";
import { openReplica } from "../replica/open_replica.ts";
import { describeGenerations, describeSnapshots } from "../restore/describe.ts";
import type { Output } from "./output.ts";

const iso = (t: number | null) => (t === null ? "-" : new Date(t).toISOString());
const size = (n: number) =>
  n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;

/** Registers `generations` and `snapshots` on the CLI. */
export function registerListCommands(cli: CAC, output: Output): void {
  cli
    .command("generations <replica-url>", "List the generations of a replica: txid and time ranges, sizes")
    .option("--json", "Print a JSON array")
    .example((bin) => `  ${bin} generations s3://my-bucket/app`)
    .action(async (url: string, flags: { json?: boolean }) => {
      const gens = await describeGenerations(openReplica(url));
      if (flags.json) return void output.out(JSON.stringify(gens));
      if (gens.length === 0) return void output.out("no generations: the replica is empty");
      const rows = gens.map((g) =>
        [g.generation, `${g.firstTxid ?? "-"}..${g.lastTxid ?? "-"}`, iso(g.firstTime), iso(g.lastTime),
          String(g.snapshots), String(g.segments), size(g.bytes)]
      );
      output.out(table(["generation", "txids", "from", "to", "snapshots", "segments", "size"], rows));
    });
  cli
    .command("snapshots <replica-url>", "List the snapshots of a replica")
    .option("--json", "Print a JSON array")
    .example((bin) => `  ${bin} snapshots file:///var/backups/app`)
    .action(async (url: string, flags: { json?: boolean }) => {
      const snaps = await describeSnapshots(openReplica(url));
      if (flags.json) return void output.out(JSON.stringify(snaps));
      if (snaps.length === 0) return void output.out("no snapshots: the replica is empty");
      const rows = snaps.map((s) => [s.generation, String(s.txid), iso(s.time), size(s.bytes)]);
      output.out(table(["generation", "txid", "time", "size"], rows));
    });
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n");
}
