#!/usr/bin/env python3
"""Runs one command and writes the kernel's resource usage of it as JSON.

    python3 scripts/bench_rusage.py OUT.json -- CMD [ARG]...

Used by scripts/bench_compare.ts to measure a replicator (walship or
Litestream) as a single process: SIGTERM and SIGINT sent to this wrapper are
forwarded to the child, and once the child exits, os.wait4 gives its rusage
(ru_utime, ru_stime in seconds, ru_maxrss in KiB on Linux, ru_minflt: page
faults served without I/O, each mostly a fresh page the kernel zeroes). The wrapper
exits with the child's exit code (128 + signal if it was killed).
"""

import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: bench_rusage.py OUT.json -- CMD [ARG]...", file=sys.stderr)
        return 2
    out, cmd = sys.argv[1], sys.argv[3:]
    started = time.time()
    child = subprocess.Popen(cmd)

    def forward(signum, _frame):
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            _pid, status, ru = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    child.returncode = 0  # reaped here; keep Popen from waiting again
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    else:
        code = 128 + os.WTERMSIG(status)
    result = {
        "exit": code,
        "utime": ru.ru_utime,
        "stime": ru.ru_stime,
        "maxrss_kib": ru.ru_maxrss,
        "minflt": ru.ru_minflt,
        "started": started,
        "wall": time.time() - started,
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out)
    return code


if __name__ == "__main__":
    sys.exit(main())
