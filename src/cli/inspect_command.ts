/**
 * `walship inspect <db> [--json]`.
 *
 * @module
 */

import type { CAC } from "cac";
import { formatInspect, inspect } from "../capture/inspect.ts";
import type { Output } from "./output.ts";

/** Registers `inspect` on the CLI. */
export function registerInspect(cli: CAC, output: Output): void {
  cli
    .command("inspect <db>", "Show what a database, its WAL and its wal-index hold (reads only)")
    .option("--json", "Print one JSON object (database, wal, shm) instead of a summary")
    .example((bin) => `  ${bin} inspect app.db`)
    .example((bin) => `  ${bin} inspect app.db --json | jq .wal.commits`)
    .action((db: string, options: { json?: boolean }) => {
      const report = inspect(db);
      output.out(options.json ? JSON.stringify(report) : formatInspect(db, report));
    });
}
