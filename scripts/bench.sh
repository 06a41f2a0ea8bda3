#!/usr/bin/env bash
# walship beside Litestream v0.3.13 (scripts/bench_compare.ts), then WAL scan
# and checksum throughput, replication and restore, heal vs snapshot (on Deno
# and on Bun), and what replication costs a busy writer (scripts/bench_writer.sh);
# see docs/BENCHMARKS.md.
# Usage: npm run bench                              # everything
#        npm run bench -- --compare-only [ARGS]     # only the comparison; ARGS go to bench_compare.ts
#        npm run bench -- --internal-only           # only the internal benchmarks
#        npm run bench -- --quick --only 1,2        # ARGS go to bench_compare.ts, then the internal ones run
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"
compare=1
internal=1
args=()
for a in "$@"; do
  case "$a" in
    --compare-only) internal=0 ;;
    --internal-only) compare=0 ;;
    *) args+=("$a") ;;
  esac
done
if [ "$compare" = 1 ]; then
  deno run -A scripts/bench_compare.ts ${args[@]+"${args[@]}"}
  echo
fi
[ "$internal" = 1 ] || exit 0
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
echo
bash scripts/bench_writer.sh
