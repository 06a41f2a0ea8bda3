#!/usr/bin/env bash
# WAL scan and checksum throughput, replication and restore, then heal vs snapshot, on Deno and on Bun;
# see docs/BENCHMARKS.md.
# Usage: npm run bench
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"
# --expose-gc lets the benchmark free one row's garbage before the next, as it does on Bun.
deno run -A --v8-flags=--expose-gc scripts/bench_scan.ts
echo
bun scripts/bench_scan.ts
echo
deno run -A scripts/bench_restore.ts
echo
bun scripts/bench_restore.ts
echo
deno run -A scripts/bench_heal.ts --replica file,s3
echo
bun scripts/bench_heal.ts --replica file,s3
