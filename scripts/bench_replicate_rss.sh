#!/usr/bin/env bash
# Replicate's memory through a burst: the benchmarks' workload 1 (or 2)
# writer beside `walship replicate` to s3rver, with the replicator's
# /proc/PID/status sampled every 50 ms. Prints RSS idle, the peak (VmHWM),
# and the sampled RssAnon peak. docs/BENCHMARKS.md, session 10.
#
#   bash scripts/bench_replicate_rss.sh [--walship BIN] [--workload 1|2]
set -euo pipefail
cd "$(dirname "$0")/.."
WALSHIP=dist/walship
WORKLOAD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --walship) WALSHIP=$2; shift 2 ;;
    --workload) WORKLOAD=$2; shift 2 ;;
    *) echo "usage: bench_replicate_rss.sh [--walship BIN] [--workload 1|2]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$WALSHIP" ]; then echo "no walship binary at $WALSHIP (npm run build makes dist/walship)" >&2; exit 2; fi
WORK=$(mktemp -d /tmp/walship-bench-rss.XXXXXX)
PORT=$((9300 + RANDOM % 500))
S3PID=""
WP=""
cleanup() {
  [ -n "$WP" ] && kill "$WP" 2>/dev/null || true
  [ -n "$S3PID" ] && kill "$S3PID" 2>/dev/null || true
  pkill -f "_s3rver_main.cjs --port $PORT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# s3rver's stdin must stay open and idle (fed from /dev/zero it spins a core).
sleep 100000 | node test/_s3rver_main.cjs --port "$PORT" --dir "$WORK/s3" --bucket bench >/dev/null 2>&1 &
S3PID=$!
sleep 1.5
DB=$WORK/db.sqlite
if [ "$WORKLOAD" = 2 ]; then
  python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)')" "$DB"
else
  python3 scripts/bench_sqlite.py init "$DB" >/dev/null
fi
AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER "$WALSHIP" replicate "$DB" \
  "s3://bench/db?endpoint=http://127.0.0.1:$PORT" >"$WORK/replicate.log" 2>&1 &
WP=$!
sleep 2
status() { grep -E "^$1:" "/proc/$WP/status" | awk '{print $2}'; }
echo "idle: RSS $(( $(status VmRSS) / 1024 )) MiB (RssFile $(( $(status RssFile) / 1024 )), RssAnon $(( $(status RssAnon) / 1024 )))"
( while kill -0 "$WP" 2>/dev/null; do status RssAnon 2>/dev/null || true; sleep 0.05; done ) >"$WORK/anon.log" &
if [ "$WORKLOAD" = 2 ]; then
  python3 scripts/bench_sqlite.py blobs "$DB" "$WORK/w.json" --tx 2000 --size 65536 >/dev/null
else
  python3 scripts/bench_sqlite.py heavy "$DB" "$WORK/w.json" --tx 20000 --rows 10 --size 150 >/dev/null
fi
sleep 4
echo "workload $WORKLOAD: peak RSS (VmHWM) $(( $(status VmHWM) / 1024 )) MiB, sampled RssAnon peak $(( $(sort -n "$WORK/anon.log" | tail -1) / 1024 )) MiB"
