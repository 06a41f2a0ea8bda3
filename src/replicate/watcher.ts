/**
 * Wakes the replicator when the database or its WAL changes: file-system
 * events where the runtime delivers them, and a poll as the fallback that
 * always runs (events can be dropped, and some file systems have none).
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";

/** A running watch; `close` stops it. */
export interface Watch {
  close(): void;
}

/** Calls `onChange` on changes to `dbPath`, `-wal` or `-shm`, and every `pollMs` regardless. */
export function watchDatabase(dbPath: string, pollMs: number, onChange: () => void): Watch {
  const dir = path.dirname(path.resolve(dbPath));
  const base = path.basename(dbPath);
  let watcher: fs.FSWatcher | null = null;
  try {
    watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
      if (name === null || String(name).startsWith(base)) onChange();
    });
    watcher.on("error", () => {
      watcher?.close();
      watcher = null;
    });
  } catch {
    watcher = null; // no events here: the poll alone keeps up
  }
  const timer = setInterval(onChange, pollMs);
  return {
    close() {
      clearInterval(timer);
      watcher?.close();
    },
  };
}
