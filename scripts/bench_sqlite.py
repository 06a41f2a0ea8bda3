#!/usr/bin/env python3
"""The SQLite side of scripts/bench_compare.ts: a real SQLite writer
(Python's sqlite3 module, never walship code), database builders, and a
logical content hash.

    bench_sqlite.py init DB                       # WAL mode, empty table t
    bench_sqlite.py idle DB...                    # small WAL databases, 10 rows each
    bench_sqlite.py build DB --mib N              # table t of ~N MiB (3,500-byte rows)
    bench_sqlite.py heavy DB OUT --tx N --rows R --size S
    bench_sqlite.py blobs DB OUT --tx N --size S
    bench_sqlite.py paced DB OUT --tx N --interval-ms P --size S
    bench_sqlite.py multi OUT --seconds D --interval-ms P DB...
    bench_sqlite.py hash DB                       # prints JSON {hash, integrity, rows}

Writers use journal_mode=WAL, synchronous=NORMAL, busy_timeout=10000 and
SQLite's default wal_autocheckpoint (1000 pages), and record the wall-clock
time (time.time()) right after each COMMIT returns. OUT is a JSON file:
{"commits": [t, ...] or {db: [t, ...]}, "tx", "elapsed", "tps"}.
Payloads are generated before the timed loop, so tps is SQLite's rate.
"""

import argparse
import hashlib
import json
import os
import random
import sqlite3
import sys
import time

WORDS = (
    "alpha beta gamma delta order item user paid shipped note invoice cart "
    "customer address street city total price amount refund status pending "
    "done open closed review rating comment product stock warehouse"
).split()


def text(rng: random.Random, n: int) -> str:
    s = " ".join(rng.choices(WORDS, k=n // 4 + 8))
    while len(s) < n:
        s += " " + " ".join(rng.choices(WORDS, k=n // 4 + 8))
    return s[:n]


def connect(db: str) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    con.execute("PRAGMA busy_timeout=10000")
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SystemExit(f"{db}: journal_mode is {mode}, not wal")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def init(db: str, blob: bool = False) -> sqlite3.Connection:
    con = connect(db)
    kind = "BLOB" if blob else "TEXT"
    con.execute(f"CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body {kind})")
    return con


def write_out(path: str, commits, tx: int, elapsed: float) -> None:
    with open(path, "w") as f:
        json.dump({"commits": commits, "tx": tx, "elapsed": elapsed, "tps": tx / elapsed if elapsed else 0}, f)


def cmd_init(a) -> None:
    init(a.db).close()


def cmd_idle(a) -> None:
    rng = random.Random(7)
    for db in a.dbs:
        con = init(db)
        con.execute("BEGIN")
        for _ in range(10):
            con.execute("INSERT INTO t(body) VALUES (?)", (text(rng, 150),))
        con.execute("COMMIT")
        con.close()


def cmd_build(a) -> None:
    rng = random.Random(11)
    con = init(a.db, blob=True)
    rows = max(1, (a.mib * 1048576) // 3500)
    filler = [text(rng, 1750).encode() for _ in range(64)]
    con.execute("BEGIN")
    for i in range(rows):
        # Half random bytes, half word-like text: compresses roughly 2:1.
        con.execute("INSERT INTO t(body) VALUES (?)", (os.urandom(1750) + filler[i % 64],))
        if i % 20000 == 19999:
            con.execute("COMMIT")
            con.execute("BEGIN")
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def run_timed(a, con, payload, write, interval_ms: float = 0) -> None:
    """One transaction per payload item, `write(i, item)` inside it, each
    commit's time recorded; paced at `interval_ms` when given, else as fast as
    SQLite goes. Closes `con` and writes the result to `a.out`."""
    commits = []
    t0 = time.time()
    for i, item in enumerate(payload):
        if interval_ms:
            due = t0 + i * interval_ms / 1000
            now = time.time()
            if due > now:
                time.sleep(due - now)
        con.execute("BEGIN")
        write(i, item)
        con.execute("COMMIT")
        commits.append(time.time())
    elapsed = time.time() - t0
    con.close()
    write_out(a.out, commits, a.tx, elapsed)


def cmd_heavy(a) -> None:
    rng = random.Random(1)
    payload = [[text(rng, a.size) for _ in range(a.rows)] for _ in range(a.tx)]
    con = init(a.db)
    run_timed(a, con, payload, lambda _i, rows: con.executemany("INSERT INTO t(body) VALUES (?)", [(r,) for r in rows]))


def cmd_blobs(a) -> None:
    rng = random.Random(2)
    half = a.size // 2
    payload = [os.urandom(half) + text(rng, a.size - half).encode() for _ in range(a.tx)]
    con = init(a.db, blob=True)
    run_timed(a, con, payload, lambda _i, blob: con.execute("INSERT INTO t(body) VALUES (?)", (blob,)))


def cmd_paced(a) -> None:
    rng = random.Random(3)
    payload = [text(rng, a.size) for _ in range(a.tx)]
    con = connect(a.db)
    n = con.execute("SELECT max(id) FROM t").fetchone()[0] or 0

    def write(i, body):
        if n and i % 2 == 0:
            con.execute("UPDATE t SET body = ? WHERE id = ?", (body.encode(), rng.randint(1, n)))
        else:
            con.execute("INSERT INTO t(body) VALUES (?)", (body.encode(),))

    run_timed(a, con, payload, write, a.interval_ms)


def cmd_multi(a) -> None:
    """Round-robin over the databases, one single-row transaction every interval."""
    rng = random.Random(4)
    cons = [connect(db) for db in a.dbs]
    commits = {db: [] for db in a.dbs}
    pool = [text(rng, 150) for _ in range(256)]
    t0 = time.time()
    i = 0
    while True:
        due = t0 + i * a.interval_ms / 1000
        if due - t0 >= a.seconds:
            break
        now = time.time()
        if due > now:
            time.sleep(due - now)
        k = i % len(cons)
        cons[k].execute("INSERT INTO t(body) VALUES (?)", (pool[i % 256],))
        commits[a.dbs[k]].append(time.time())
        i += 1
    elapsed = time.time() - t0
    for con in cons:
        con.close()
    write_out(a.out, commits, i, elapsed)


def cmd_hash(a) -> None:
    """SHA-256 over the schema and every row (by rowid) of every table except
    SQLite's own and Litestream's bookkeeping tables (_litestream_*), plus
    PRAGMA integrity_check. Checkpoints the WAL into the file before closing."""
    con = sqlite3.connect(a.db, isolation_level=None)
    h = hashlib.sha256()
    rows = 0
    tables = [
        r
        for r in con.execute("SELECT name, sql FROM sqlite_master WHERE type='table' ORDER BY name")
        if not r[0].startswith("sqlite_") and not r[0].startswith("_litestream")
    ]
    for name, sql in tables:
        h.update(f"{name}\0{sql}\0".encode())
        for row in con.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid'):
            rows += 1
            for v in row:
                b = v if isinstance(v, bytes) else repr(v).encode()
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    print(json.dumps({"hash": h.hexdigest(), "integrity": integrity, "rows": rows}))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init"); s.add_argument("db"); s.set_defaults(fn=cmd_init)
    s = sub.add_parser("idle"); s.add_argument("dbs", nargs="+"); s.set_defaults(fn=cmd_idle)
    s = sub.add_parser("build"); s.add_argument("db"); s.add_argument("--mib", type=int, required=True)
    s.set_defaults(fn=cmd_build)
    s = sub.add_parser("heavy"); s.add_argument("db"); s.add_argument("out")
    s.add_argument("--tx", type=int, default=20000); s.add_argument("--rows", type=int, default=10)
    s.add_argument("--size", type=int, default=150); s.set_defaults(fn=cmd_heavy)
    s = sub.add_parser("blobs"); s.add_argument("db"); s.add_argument("out")
    s.add_argument("--tx", type=int, default=2000); s.add_argument("--size", type=int, default=65536)
    s.set_defaults(fn=cmd_blobs)
    s = sub.add_parser("paced"); s.add_argument("db"); s.add_argument("out")
    s.add_argument("--tx", type=int, required=True); s.add_argument("--interval-ms", type=float, required=True)
    s.add_argument("--size", type=int, default=1000); s.set_defaults(fn=cmd_paced)
    s = sub.add_parser("multi"); s.add_argument("out"); s.add_argument("dbs", nargs="+")
    s.add_argument("--seconds", type=float, required=True); s.add_argument("--interval-ms", type=float, required=True)
    s.set_defaults(fn=cmd_multi)
    s = sub.add_parser("hash"); s.add_argument("db"); s.set_defaults(fn=cmd_hash)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
