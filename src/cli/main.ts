/**
 * The `walship` executable: `deno run -A src/cli/main.ts`, `bun src/cli/main.ts`,
 * or the compiled `dist/walship`.
 *
 * @module
 */

import { runCli } from "./cli.ts";

process.exitCode = await runCli(process.argv.slice(2));
