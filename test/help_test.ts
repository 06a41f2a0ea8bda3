/**
 * `walship --help`, `--version` and `<command> --help`, run as a person runs
 * them (a subprocess on this runtime, and the compiled dist/walship when it
 * has been built): exit 0, nothing on stderr, a usage line, every option
 * described, and for each command an Examples section whose examples are
 * real: they run that command and use only flags its help lists. Structure
 * is asserted, not the full text, so adding a flag or an example needs no
 * change here.
 */

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { VERSION } from "../src/version.ts";
import { test } from "./_runtime.ts";
import { ROOT, spawnWalship } from "./_util.ts";

const COMMANDS = ["replicate", "restore", "generations", "snapshots", "inspect"];
/** cac's argument forms: `<db>`, `[db]`, `<...urls>`, `[...urls]`. */
const ARG = String.raw`[<[](?:\.\.\.)?[a-z][a-z-]*[>\]]`;
const BINARY = path.join(ROOT, "dist", "walship");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(args: string[], executable?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawnWalship(args, { executable });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

/** The lines of a help section (`Options:`, `Examples:`...), up to the next blank line. */
function section(help: string, name: string): string[] {
  const lines = help.split("\n");
  const start = lines.findIndex((l) => l === `${name}:`);
  if (start === -1) return [];
  const end = lines.findIndex((l, i) => i > start && l.trim() === "");
  return lines.slice(start + 1, end === -1 ? undefined : end);
}

function assertOk(r: Run, what: string): void {
  assert.equal(r.code, 0, `${what} exits 0; stderr: ${r.stderr}`);
  assert.equal(r.stderr, "", `${what} prints nothing on stderr`);
}

function assertVersion(r: Run): void {
  assertOk(r, "--version");
  assert.match(r.stdout, new RegExp(`^walship/${VERSION.replaceAll(".", "\\.")}(\\s|$)`));
  assert.equal(r.stdout.trim().split("\n").length, 1, `one line: ${r.stdout}`);
}

function assertTopHelp(r: Run): void {
  assertOk(r, "--help");
  assert.ok(r.stdout.startsWith(`walship/${VERSION}\n`), r.stdout);
  assert.match(r.stdout, /^Usage:\n {2}\$ walship <command> \[options\]$/m);
  const commands = section(r.stdout, "Commands");
  for (const name of COMMANDS) {
    assert.ok(
      commands.some((l) => new RegExp(`^ {2}${name}( ${ARG})* {2,}\\S`).test(l)),
      `${name} listed with a description under Commands:\n${commands.join("\n")}`,
    );
    assert.match(r.stdout, new RegExp(`^ {2}\\$ walship ${name} --help$`, "m"));
  }
  const options = section(r.stdout, "Options");
  assert.ok(options.some((l) => /^ {2}-h, --help {2,}\S/.test(l)), options.join("\n"));
  assert.ok(options.some((l) => /^ {2}-v, --version {2,}\S/.test(l)), options.join("\n"));
}

function assertCommandHelp(name: string, r: Run): void {
  const what = `${name} --help`;
  assertOk(r, what);
  assert.ok(r.stdout.startsWith(`walship/${VERSION}\n`), r.stdout);
  assert.match(r.stdout, new RegExp(`^Usage:\\n {2}\\$ walship ${name}( ${ARG})+( \\[options\\])?$`, "m"), r.stdout);

  const options = section(r.stdout, "Options");
  assert.ok(options.length >= 2, `${what}: an Options section\n${r.stdout}`);
  for (const line of options) {
    assert.match(line, /^ {2}(-\w, )?--[a-z][a-z-]*( [<[][^>\]]+[>\]])? {2,}\S/, `${what}: every option has a description`);
  }
  assert.ok(options.some((l) => /--help/.test(l)), `${what} lists --help`);
  const flags = new Set(options.flatMap((l) => [...l.matchAll(/(?:^|[ ,])(--?[a-z][a-z-]*)/g)].map((m) => m[1])));

  const examples = section(r.stdout, "Examples");
  assert.ok(examples.length >= 1, `${what}: at least one example\n${r.stdout}`);
  for (const example of examples) {
    // A real example: runs this command with at least one argument...
    assert.match(example, new RegExp(`^ {2}walship ${name} \\S`), `${what}: ${example}`);
    // ...and uses only flags this help lists (--no-x negates a listed --x).
    for (const m of example.matchAll(/\s(--?[a-z][a-z-]*)/g)) {
      const flag = m[1].replace(/^--no-/, "--");
      assert.ok(flags.has(flag), `${what}: example uses ${m[1]}, not among the options:\n${example}`);
    }
  }
}

test("walship --version prints the version of src/version.ts", async () => {
  assertVersion(await run(["--version"]));
  assertVersion(await run(["-v"]));
});

test("walship --help: usage, every command, how to get a command's help", async () => {
  assertTopHelp(await run(["--help"]));
  const bare = await run([]);
  assertTopHelp(bare);
});

for (const name of COMMANDS) {
  test(`walship ${name} --help: usage, described options, real examples`, async () => {
    assertCommandHelp(name, await run([name, "--help"]));
  });
}

test("the compiled dist/walship prints the same help and version (when built)", async () => {
  if (!fs.existsSync(BINARY)) {
    console.warn(`skipped: ${BINARY} is not built (npm run build)`);
    return;
  }
  assertVersion(await run(["--version"], BINARY));
  assertTopHelp(await run(["--help"], BINARY));
  for (const name of COMMANDS) assertCommandHelp(name, await run([name, "--help"], BINARY));
});
