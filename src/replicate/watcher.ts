/**
 * Wakes the replicator when the database or its WAL changes: file-system
 * events where the runtime delivers them, and a poll as the fallback that
 * always runs (events can be dropped, and some file systems have none).
 *
 * One directory watch serves every database in that directory: with
 * hundreds of databases side by side, a watch each would hand every event
 * to every database.
 *
 * A busy writer makes an event of every write to its WAL, tens of
 * thousands a second, and each one wakes the runtime's watch thread: the
 * writer pays for that wake-up inside its own write(), and walship pays
 * for the thread. (Bun then hands JavaScript at most one callback every
 * 2 ms or so; Deno hands over every event.) So once one database's events
 * wake it BUSY_EVENTS times within BUSY_WINDOW_MS, its directory goes
 * unwatched for PAUSE_MS, and the databases that had events are woken
 * every BUSY_POLL_MS instead; then the watch starts again, and the other
 * databases there whose database file or WAL changed meanwhile (size,
 * mtime) are woken once (docs/DECISIONS.md, "File events, and when walship
 * stops listening").
 *
 * @module
 */

import fs from "node:fs";
import path from "node:path";
import { fileSignature } from "../capture/file_source.ts";

/** Wakes of one database within one window that make its directory busy: 200 a second. */
export const BUSY_EVENTS = 10;
/** The window events are counted in, ms. */
export const BUSY_WINDOW_MS = 50;
/** How long a busy directory goes unwatched, ms. */
export const PAUSE_MS = 250;
/** While unwatched, how often the files that had events are woken, ms. */
export const BUSY_POLL_MS = 25;

/** A running watch; `close` stops it. */
export interface Watch {
  close(): void;
}

type Wake = (event: boolean) => void;

/** One directory's watch and the callbacks of the files in it, by file name. */
interface DirectoryWatch {
  dir: string;
  watcher: fs.FSWatcher | null;
  byName: Map<string, Set<Wake>>;
  /** Every callback, with its database's path (woken on an event without a file name). */
  all: Map<Wake, string>;
  /** The callbacks woken since `windowStart`, and how often. */
  windowStart: number;
  hot: Map<Wake, number>;
  /** While unwatched: the poll of the files that were busy, and the timer that ends the pause. */
  pause: { poll: ReturnType<typeof setInterval>; end: ReturnType<typeof setTimeout> } | null;
  pauses: number;
}

const directories = new Map<string, DirectoryWatch>();

/**
 * Calls `onChange(true)` on file events for `dbPath`, `-wal` or `-shm` (or,
 * while its directory is too busy to watch, every BUSY_POLL_MS), and
 * `onChange(false)` every `pollMs` regardless.
 */
export function watchDatabase(dbPath: string, pollMs: number, onChange: Wake): Watch {
  const dir = path.dirname(path.resolve(dbPath));
  const base = path.basename(dbPath);
  const names = [base, `${base}-wal`, `${base}-shm`];
  const d = directoryWatch(dir);
  for (const name of names) {
    let set = d.byName.get(name);
    if (!set) d.byName.set(name, set = new Set());
    set.add(onChange);
  }
  d.all.set(onChange, path.join(dir, base));
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
      d.hot.delete(onChange);
      if (d.all.size === 0) {
        endPause(d);
        d.watcher?.close();
        d.watcher = null;
        directories.delete(dir);
      }
    },
  };
}

/** How the watch of `dir` is doing (for tests): null when nothing there is watched. */
export function watchState(dir: string): { watching: boolean; paused: boolean; pauses: number } | null {
  const d = directories.get(path.resolve(dir));
  return d ? { watching: d.watcher !== null, paused: d.pause !== null, pauses: d.pauses } : null;
}

function directoryWatch(dir: string): DirectoryWatch {
  const known = directories.get(dir);
  if (known) return known;
  const d: DirectoryWatch = {
    dir,
    watcher: null,
    byName: new Map(),
    all: new Map(),
    windowStart: 0,
    hot: new Map(),
    pause: null,
    pauses: 0,
  };
  startWatching(d);
  directories.set(dir, d);
  return d;
}

function startWatching(d: DirectoryWatch): void {
  let watcher: fs.FSWatcher;
  try {
    watcher = fs.watch(d.dir, { persistent: false }, (_event, name) => {
      // Events already queued when the watch was closed are not counted again.
      if (d.watcher === watcher) onEvent(d, name);
    });
  } catch {
    return; // no events here: the poll alone keeps up
  }
  watcher.on("error", () => {
    watcher.close();
    if (d.watcher === watcher) d.watcher = null; // the poll alone keeps up
  });
  d.watcher = watcher;
  d.windowStart = Date.now();
  d.hot.clear();
}

function onEvent(d: DirectoryWatch, name: string | Buffer | null | undefined): void {
  const now = Date.now();
  if (now - d.windowStart >= BUSY_WINDOW_MS) {
    d.windowStart = now;
    d.hot.clear();
  }
  const set = name === null || name === undefined ? d.all.keys() : d.byName.get(path.basename(String(name)));
  if (!set) return;
  let busy = false;
  for (const f of set) {
    const n = (d.hot.get(f) ?? 0) + 1;
    d.hot.set(f, n);
    busy ||= n >= BUSY_EVENTS;
    f(true);
  }
  if (busy) startPause(d);
}

/**
 * Stops watching a busy directory for PAUSE_MS: the databases that had
 * events are woken on a timer meanwhile, and the others once at the end if
 * their files changed.
 */
function startPause(d: DirectoryWatch): void {
  d.watcher?.close();
  d.watcher = null;
  d.pauses++;
  const hot = [...d.hot.keys()];
  const quiet = new Map<Wake, string>();
  for (const [f, db] of d.all) if (!d.hot.has(f)) quiet.set(f, signature(db));
  const wakeHot = () => {
    for (const f of hot) if (d.all.has(f)) f(true);
  };
  d.pause = {
    poll: setInterval(wakeHot, BUSY_POLL_MS),
    end: setTimeout(() => {
      endPause(d);
      if (directories.get(d.dir) !== d) return;
      startWatching(d);
      // What changed since the last wake is read now, not at the next event.
      wakeHot();
      for (const [f, before] of quiet) {
        const db = d.all.get(f);
        if (db !== undefined && signature(db) !== before) f(true);
      }
    }, PAUSE_MS),
  };
}

/**
 * Size, mtime and inode of a database file and its WAL: a commit changes
 * the WAL's mtime (a write within the same clock tick as the first look may
 * not, and then waits for the poll). A file that cannot be looked at reads
 * as absent: the poll is there for it.
 */
function signature(db: string): string {
  return `${fileSignature(db)}|${fileSignature(`${db}-wal`)}`;
}

function endPause(d: DirectoryWatch): void {
  if (!d.pause) return;
  clearInterval(d.pause.poll);
  clearTimeout(d.pause.end);
  d.pause = null;
}
