/**
 * `replicate --exec`: the app runs as walship's child, with the terminal's
 * stdin, stdout and stderr. The command line is split into words the way a
 * shell would for quotes and backslashes, and run without a shell, so
 * signals reach the app itself.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { constants } from "node:os";
import { WalshipError } from "../errors.ts";
import type { Log } from "../log.ts";

/**
 * Splits a command line into words: whitespace separates, 'single' and
 * "double" quotes group, a backslash escapes the next character (inside
 * double quotes only before `"`, `\`, `$` and a backtick). Nothing is
 * expanded. Throws BAD_ARGUMENT for an unclosed quote or an empty command.
 *
 * @example
 * ```ts
 * splitCommand(`node server.js --name "my app"`); // ["node", "server.js", "--name", "my app"]
 * ```
 */
export function splitCommand(line: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  let quote: "'" | '"' | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null;
      else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === "\\" && i + 1 < line.length && `"\\$\``.includes(line[i + 1])) word += line[++i];
      else word += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < line.length) {
      word += line[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (quote) throw new WalshipError("BAD_ARGUMENT", `--exec: unclosed ${quote} quote in ${JSON.stringify(line)}`);
  if (inWord) words.push(word);
  if (words.length === 0) throw new WalshipError("BAD_ARGUMENT", "--exec: the command is empty");
  return words;
}

/** A running child. */
export interface Child {
  pid: number | undefined;
  exited: boolean;
  /** How it ended: its exit code, or 128 + the signal number when a signal ended it (as shells report). */
  done: Promise<{ code: number; signal: string | null }>;
  signal(name: NodeJS.Signals): void;
}

/**
 * Starts `args` as a child sharing walship's stdio. A command that cannot
 * be started ends with code 127 and one logged line.
 */
export function runChild(args: string[], log: Log): Child {
  const proc = spawn(args[0], args.slice(1), { stdio: "inherit" });
  const child: Child = {
    pid: proc.pid,
    exited: false,
    done: new Promise((resolve) => {
      let settled = false;
      const finish = (r: { code: number; signal: string | null }) => {
        if (settled) return;
        settled = true;
        child.exited = true;
        resolve(r);
      };
      proc.on("error", (err: NodeJS.ErrnoException) => {
        log.error(`--exec: cannot start ${args[0]}: ${err.code === "ENOENT" ? "command not found" : err.message}`);
        finish({ code: 127, signal: null });
      });
      proc.on("exit", (code, signal) => {
        const num = signal ? (constants.signals as Record<string, number>)[signal] ?? 0 : 0;
        finish({ code: code ?? 128 + num, signal });
      });
    }),
    signal(name) {
      // process.kill by pid: a runtime's own kill() may misreport a child that traps the signal.
      if (proc.pid !== undefined && !child.exited) {
        try {
          process.kill(proc.pid, name);
        } catch {
          // already gone
        }
      }
    },
  };
  log.info("started the child", { pid: proc.pid, command: args[0] });
  return child;
}
