#!/usr/bin/env bash
# The whole suite: type-check, build the binary the CLI tests run, then the
# same test files under Deno and under Bun. Usage: npm test
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"
echo "== type check (deno check)"
deno check src/ test/ scripts/
echo "== build dist/walship"
bash scripts/build.sh
echo "== tests on Deno"
deno test -A --parallel test/
echo "== tests on Bun"
bun test --timeout 300000 test/
