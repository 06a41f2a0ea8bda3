/**
 * The `walship` command line: one file per command registers itself here.
 * Expected failures print `walship: <one line>` and exit 1; a stack trace
 * appears only for a bug, and only with WALSHIP_DEBUG=1.
 *
 * @module
 */

import { cac } from "cac";
import { errorMessage, WalshipError } from "../errors.ts";
import { VERSION } from "../version.ts";
import { registerInspect } from "./inspect_command.ts";
import { registerListCommands } from "./list_commands.ts";
import { registerReplicate } from "./replicate_command.ts";
import { registerRestore } from "./restore_command.ts";
import { type Output, processOutput } from "./output.ts";

/**
 * Runs the CLI on `args` (without the program name) and resolves to the exit code.
 *
 * @example
 * ```ts
 * const code = await runCli(["inspect", "app.db", "--json"]);
 * ```
 */
export async function runCli(args: string[], output: Output = processOutput): Promise<number> {
  const cli = cac("walship");
  registerReplicate(cli, output);
  registerRestore(cli, output);
  registerListCommands(cli, output);
  registerInspect(cli, output);
  cli.example((bin) => `  ${bin} replicate app.db s3://my-bucket/app`);
  cli.example((bin) => `  ${bin} restore -o app.db s3://my-bucket/app`);
  cli.example((bin) => `  ${bin} replicate --config /etc/walship.yml`);
  cli.help();
  cli.version(VERSION);
  try {
    cli.parse(["walship", "walship", ...args], { run: false });
    if (!cli.matchedCommand) {
      if (cli.options.help || cli.options.version) return 0;
      if (cli.args.length > 0) {
        throw new WalshipError("BAD_ARGUMENT", `unknown command "${cli.args[0]}": see walship --help`);
      }
      cli.outputHelp();
      return 0;
    }
    if (cli.options.help) return 0;
    const result = await cli.runMatchedCommand();
    return typeof result === "number" ? result : 0;
  } catch (err) {
    if (err instanceof WalshipError || (err as Error)?.name === "CACError") {
      output.err(`walship: ${errorMessage(err)}`);
    } else {
      output.err(`walship: unexpected error: ${errorMessage(err)}`);
      if (process.env.WALSHIP_DEBUG) output.err(String((err as Error)?.stack ?? err));
    }
    return 1;
  }
}
