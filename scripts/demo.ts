/**
 * The quick-start demo: replicates a database that is being written to a
 * local directory replica (no cloud account needed), stops, restores it,
 * and checks that the copy is byte for byte the original.
 *
 *   npm run demo        (bun scripts/demo.ts)
 */

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

// Bun's embedded SQLite writes the demo database (walship itself never links SQLite).
const bunSqlite = "bun:sqlite";
const { Database } = await import(bunSqlite);

const root = fileURLToPath(new URL("..", import.meta.url));
const dir = path.join(root, "demo");
fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir);
const db = path.join(dir, "app.db");
const replica = `file://${path.join(dir, "replica")}`;
const restored = path.join(dir, "restored.db");
const cli = [path.join(root, "src/cli/main.ts")];

const app = new Database(db);
app.exec("PRAGMA journal_mode=WAL; CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, at TEXT)");

console.log(`$ walship replicate ${path.relative(root, db)} ${replica}`);
const replicator = spawn(process.execPath, [...cli, "replicate", db, replica, "--sync-interval", "200ms"], {
  stdio: ["ignore", "inherit", "inherit"],
  env: { ...process.env, WALSHIP_LOG_FORMAT: "pretty" },
});
await new Promise((r) => setTimeout(r, 800));

console.log("writing 500 transactions while replicating...");
const insert = app.query("INSERT INTO notes(body, at) VALUES (?, ?)");
for (let i = 0; i < 500; i++) {
  insert.run(`note ${i} ${"lorem ipsum ".repeat(i % 20)}`, new Date().toISOString());
  if (i % 100 === 99) await new Promise((r) => setTimeout(r, 100));
}
replicator.kill("SIGTERM");
const code = await new Promise<number | null>((r) => replicator.on("exit", r));
if (code !== 0) throw new Error(`walship replicate exited with ${code}`);
// Checkpointed once walship is gone (its read mark holds backfill back while it runs), so the
// original file alone holds the state to compare with.
app.exec("PRAGMA wal_checkpoint(TRUNCATE)");

console.log(`$ walship restore -o ${path.relative(root, restored)} ${replica}`);
const restore = spawnSync(process.execPath, [...cli, "restore", "-o", restored, replica], { stdio: "inherit" });
if (restore.status !== 0) process.exit(restore.status ?? 1);

const same = Buffer.compare(fs.readFileSync(db), fs.readFileSync(restored)) === 0;
const rows = new Database(restored).query("SELECT count(*) AS n FROM notes").get() as { n: number };
app.close();
console.log(`restored copy: ${rows.n} rows, byte-for-byte ${same ? "identical to" : "DIFFERENT from"} the original`);
process.exit(same && rows.n === 500 ? 0 : 1);
