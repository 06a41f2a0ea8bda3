/**
 * The one place where the test suite differs between Deno and Bun: how a
 * test is registered and which embedded SQLite the runtime offers. Every
 * test file imports `test` and `openSqlite` from here, so the same files run
 * under `deno test` and `bun test`.
 *
 * @module
 */

// deno-lint-ignore no-explicit-any
const g = globalThis as any;
export const runtimeName: "deno" | "bun" = g.Bun ? "bun" : "deno";

const bunTestSpecifier = "bun:test";
const bunSqliteSpecifier = "bun:sqlite";
const nodeSqliteSpecifier = "node:sqlite";
// deno-lint-ignore no-explicit-any
const bunTest: any = runtimeName === "bun" ? await import(bunTestSpecifier) : null;

/** Options for {@linkcode test}. */
export interface TestOptions {
  /** Milliseconds before the test fails; default 120 s. */
  timeout?: number;
}

/** Registers a test with the runtime's own test runner. */
export function test(name: string, fn: () => unknown | Promise<unknown>, options: TestOptions = {}): void {
  const timeout = options.timeout ?? 120_000;
  if (bunTest) {
    bunTest.test(name, fn, timeout);
  } else {
    g.Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false, sanitizeExit: false });
  }
}

/** The subset of a SQLite connection the tests use. */
export interface SqliteConnection {
  exec(sql: string): void;
  run(sql: string, ...params: unknown[]): void;
  all<T = Record<string, unknown>>(sql: string, ...params: unknown[]): T[];
  close(): void;
}

/** Opens `path` with the runtime's embedded SQLite (`bun:sqlite` or `node:sqlite`). */
export async function openSqlite(path: string): Promise<SqliteConnection> {
  if (runtimeName === "bun") {
    const { Database } = await import(bunSqliteSpecifier);
    const db = new Database(path);
    return {
      exec: (sql) => db.exec(sql),
      run: (sql, ...params) => void db.query(sql).run(...params),
      all: (sql, ...params) => db.query(sql).all(...params),
      close: () => db.close(),
    };
  }
  const { DatabaseSync } = await import(nodeSqliteSpecifier);
  const db = new DatabaseSync(path);
  return {
    exec: (sql) => db.exec(sql),
    run: (sql, ...params) => void db.prepare(sql).run(...params),
    all: (sql, ...params) => db.prepare(sql).all(...params),
    close: () => db.close(),
  };
}
