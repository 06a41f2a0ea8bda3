/**
 * Where the CLI writes. Commands take an {@linkcode Output} instead of
 * touching process.stdout, so tests can run them in-process and read what
 * they printed.
 *
 * @module
 */

/** Sinks for what a command prints. */
export interface Output {
  out(text: string): void;
  err(text: string): void;
}

/** Writes to the process's stdout and stderr. */
export const processOutput: Output = {
  out: (text) => void process.stdout.write(text.endsWith("\n") ? text : text + "\n"),
  err: (text) => void process.stderr.write(text.endsWith("\n") ? text : text + "\n"),
};
