/**
 * Wakes the replicator when the database or its WAL changes: file-system
 * events where the runtime delivers them, and a poll as the fallback that
 * always runs (events can be dropped, and some file systems have none).
 *
 * One directory watch serves every database in that directory: with
 * hundreds of databases side by side, a watch each would hand every event
 * to every database.
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";

/** A running watch; `close` stops it. */
export interface Watch {
  close(): void;
}

/** One directory's watch and the callbacks of the files in it, by file name. */
interface DirectoryWatch {
  watcher: fs.FSWatcher | null;
  byName: Map<string, Set<(event: boolean) => void>>;
  /** Callbacks to wake on an event without a file name. */
  all: Set<(event: boolean) => void>;
}

const directories = new Map<string, DirectoryWatch>();

/**
 * Calls `onChange(true)` on file events for `dbPath`, `-wal` or `-shm`, and
 * `onChange(false)` every `pollMs` regardless.
 */
export function watchDatabase(dbPath: string, pollMs: number, onChange: (event: boolean) => void): Watch {
  const dir = path.dirname(path.resolve(dbPath));
  const base = path.basename(dbPath);
  const names = [base, `${base}-wal`, `${base}-shm`];
  const d = directoryWatch(dir);
  for (const name of names) {
    let set = d.byName.get(name);
    if (!set) d.byName.set(name, set = new Set());
    set.add(onChange);
  }
  d.all.add(onChange);
  const timer = setInterval(() => onChange(false), pollMs);
  return {
    close() {
      clearInterval(timer);
      for (const name of names) {
        const set = d.byName.get(name);
        set?.delete(onChange);
        if (set?.size === 0) d.byName.delete(name);
      }
      d.all.delete(onChange);
      if (d.all.size === 0) {
        d.watcher?.close();
        directories.delete(dir);
      }
    },
  };
}

function directoryWatch(dir: string): DirectoryWatch {
  const known = directories.get(dir);
  if (known) return known;
  const d: DirectoryWatch = { watcher: null, byName: new Map(), all: new Set() };
  try {
    d.watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
      if (name === null || name === undefined) {
        for (const f of d.all) f(true);
        return;
      }
      const set = d.byName.get(path.basename(String(name)));
      if (set) for (const f of set) f(true);
    });
    d.watcher.on("error", () => {
      d.watcher?.close();
      d.watcher = null; // the poll alone keeps up
    });
  } catch {
    d.watcher = null; // no events here: the poll alone keeps up
  }
  directories.set(dir, d);
  return d;
}
