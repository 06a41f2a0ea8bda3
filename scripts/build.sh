#!/usr/bin/env bash
# Builds the single binary dist/walship (linux-x64) with `bun build --compile`,
# which works offline. Usage: npm run build
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist
node_modules/.bin/bun build --compile --minify --bytecode --format=esm src/cli/main.ts --outfile dist/walship
