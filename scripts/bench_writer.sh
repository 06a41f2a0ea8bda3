#!/usr/bin/env bash
# What replication costs the app: the benchmarks' workload 1 (or 2) writer,
# alone and beside `walship replicate` to a file replica (no S3 server to
# share the CPU with), alternating, RUNS times each. Prints the writer's
# seconds and, for walship, its CPU seconds and minor page faults (from
# scripts/bench_rusage.py). docs/BENCHMARKS.md, session 8.
#
#   bash scripts/bench_writer.sh [--walship BIN] [--runs N] [--workload 1|2]
set -euo pipefail
cd "$(dirname "$0")/.."
WALSHIP=dist/walship
RUNS=3
WORKLOAD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --walship) WALSHIP=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --workload) WORKLOAD=$2; shift 2 ;;
    *) echo "usage: bench_writer.sh [--walship BIN] [--runs N] [--workload 1|2]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$WALSHIP" ]; then
  if [ "$WALSHIP" != dist/walship ]; then echo "no walship binary at $WALSHIP" >&2; exit 2; fi
  bash scripts/build.sh
fi
WALSHIP=$(realpath "$WALSHIP")
PY=scripts/bench_sqlite.py
WORK=$(mktemp -d /tmp/walship-bench-writer.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

fresh() { # a new database in WAL mode with the workload's table
  rm -rf "$WORK/run" && mkdir -p "$WORK/run"
  python3 - "$WORK/run/app.db" "$WORKLOAD" <<'PY'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA journal_mode=WAL")
con.execute(f"CREATE TABLE t(id INTEGER PRIMARY KEY, body {'BLOB' if sys.argv[2] == '2' else 'TEXT'})")
con.close()
PY
}

write() { # runs the writer; prints its elapsed seconds
  if [ "$WORKLOAD" = 2 ]; then
    python3 $PY blobs "$WORK/run/app.db" "$WORK/run/commits.json" --tx 2000 --size 65536 >/dev/null
  else
    python3 $PY heavy "$WORK/run/app.db" "$WORK/run/commits.json" --tx 20000 --rows 10 --size 150 >/dev/null
  fi
  python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["elapsed"])' "$WORK/run/commits.json"
}

echo "workload $WORKLOAD, $RUNS runs, walship $WALSHIP"
for i in $(seq "$RUNS"); do
  fresh
  echo "run $i  unreplicated: writer $(write) s"
  fresh
  python3 scripts/bench_rusage.py "$WORK/rusage.json" -- "$WALSHIP" replicate "$WORK/run/app.db" "file://$WORK/run/replica" \
    >"$WORK/run/walship.log" 2>&1 &
  wrapper=$!
  for _ in $(seq 100); do
    [ -n "$(find "$WORK/run/replica" -name '*.wsnap' 2>/dev/null)" ] && break
    sleep 0.1
  done
  sleep 1
  took=$(write)
  sleep 2
  kill -TERM $wrapper
  wait $wrapper
  python3 - "$WORK/rusage.json" "$took" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"run {sys.argv[3]}  walship:      writer {sys.argv[2]} s, walship CPU {r['utime'] + r['stime']:.2f} s, "
      f"minor faults {r['minflt']}, peak RSS {r['maxrss_kib'] / 1024:.0f} MiB")
PY
done
