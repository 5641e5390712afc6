"""Profile of the feed read on the database side (issue 22 items 1 and 4).

Starts a PRIVATE cluster (initdb into a temp dir, unix socket only,
``shared_preload_libraries = pg_stat_statements``, planning tracked), migrates
it, and runs 16 single-row writers for a few seconds beside one feed reader
(``read_batch`` every 1 ms, as the relay's feed loop polled under load),
alternating the feed statement as it was before issue 22 item 4
(bench/feed_read_before.sql) and as it is now (sql/feed.sql), interleaved.

Reports per run: events written, the reader's backend CPU (utime + stime of
its PostgreSQL process from /proc, the figure that competes with the writers
for the cores), ``feed_read`` calls, execution and planning time
(pg_stat_statements) per 1,000 events; then the per-statement table of the
last run of each variant (calls, rows, execution and planning ms); then one
``EXPLAIN (ANALYZE, BUFFERS)`` of each statement under load.

    python -m bench.feed_profile [SECONDS] [REPS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.procs import cpu_s
from outbox.cli.embedded import EmbeddedCluster, find_bindir
from outbox.cursor import Cursor, sql_params
from outbox.migrate import migrate
from outbox.relay import feed
from outbox.sqlfiles import query

WRITERS = 16
_BEFORE = (Path(__file__).parent / "feed_read_before.sql").read_text(encoding="utf-8")


def _statement(variant: str) -> str:
    return _BEFORE if variant == "before" else query("feed_read", "feed.sql")


def _use(variant: str) -> None:
    """Make relay/feed.py run this variant's feed statement."""

    def pick(name: str, filename: str) -> str:
        if name == "feed_read":
            return _statement(variant)
        return query(name, filename)

    feed.query = pick  # type: ignore[attr-defined]


def _writers(url: str, stop: threading.Event, counts: list[int]) -> list[threading.Thread]:
    def run(i: int) -> None:
        with psycopg.connect(url, autocommit=True) as c:
            while not stop.is_set():
                c.execute("SELECT outbox.publish('bench.row', '{\"n\": 1}')")
                counts[i] += 1

    return [threading.Thread(target=run, args=(i,), daemon=True) for i in range(WRITERS)]


async def _reader(url: str, stop: threading.Event, out: dict[str, float]) -> None:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    pid = int(row[0])
    cursor = await feed.head(conn)
    cpu0 = cpu_s(pid)
    n = 0
    while not stop.is_set():
        batch = await feed.read_batch(conn, cursor, 1000)
        cursor = batch.end
        n += len(batch.events)
        if not batch.more:
            await asyncio.sleep(0.001)
    out["reader_cpu_s"] = cpu_s(pid) - cpu0
    out["read"] = n
    await conn.close()


_STATS = (
    "SELECT regexp_replace(left(query, 60), '\\s+', ' ', 'g'), calls, rows,"
    " total_exec_time, total_plan_time FROM pg_stat_statements"
    " ORDER BY total_exec_time + total_plan_time DESC LIMIT 8"
)


def _run(url: str, variant: str, seconds: float) -> dict[str, Any]:
    _use(variant)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT pg_stat_statements_reset()")
    stop = threading.Event()
    counts = [0] * WRITERS
    threads = _writers(url, stop, counts)
    out: dict[str, float] = {}

    async def main() -> None:
        task = asyncio.create_task(_reader(url, stop, out))
        for t in threads:
            t.start()
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(main())
    for t in threads:
        t.join()
    events = sum(counts)
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT calls, total_exec_time, total_plan_time FROM pg_stat_statements"
            " WHERE query LIKE '%%WITH snap AS MATERIALIZED%%'"
        ).fetchall()
        top = c.execute(_STATS).fetchall()
    per = 1000 / max(events, 1)
    return {
        "variant": variant,
        "ev_per_s": events / seconds,
        "feed_calls": sum(int(r[0]) for r in rows),
        "exec_per_1000": sum(float(r[1]) for r in rows) * per,
        "plan_per_1000": sum(float(r[2]) for r in rows) * per,
        "cpu_per_1000": out["reader_cpu_s"] * 1000 * per,
        "top": top,
    }


async def _head(url: str) -> Cursor:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await feed.head(conn)


def _explain(url: str, variant: str) -> str:
    stop = threading.Event()
    counts = [0] * WRITERS
    threads = _writers(url, stop, counts)
    for t in threads:
        t.start()
    time.sleep(1.0)
    try:
        with psycopg.connect(url, autocommit=True) as c:
            cursor = asyncio.run(_head(url))
            time.sleep(0.02)  # a read's worth of writes behind the head
            params: dict[str, Any] = {
                **sql_params(cursor),
                "limit": 1000,
                "walk_max": feed.RANGE_WALK_MAX,
            }
            plan = c.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + _statement(variant), params
            ).fetchall()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return "\n".join(str(r[0]) for r in plan)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    bindir = find_bindir()
    assert bindir is not None, "no PostgreSQL server binaries"
    with tempfile.TemporaryDirectory(prefix="outbox-profile-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        cluster = EmbeddedCluster(bindir, root, log=lambda _m: None)
        cluster.start()
        cluster.stop()
        with open(cluster.data / "postgresql.conf", "a") as f:
            f.write(
                "\nshared_preload_libraries = 'pg_stat_statements'"
                "\npg_stat_statements.track_planning = on\n"
            )
        url = cluster.start()
        try:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            with psycopg.connect(url) as c:
                migrate(c)
            results = [_run(url, v, seconds) for _ in range(reps) for v in ("before", "after")]
            print(
                "| statement | events/s | feed_read calls | reader backend CPU ms"
                " per 1,000 events | feed_read exec ms per 1,000 | plan ms per 1,000 |"
            )
            print("|---|---|---|---|---|---|")
            for r in results:
                print(
                    f"| {r['variant']} | {r['ev_per_s']:.0f} | {r['feed_calls']} |"
                    f" {r['cpu_per_1000']:.1f} | {r['exec_per_1000']:.1f} |"
                    f" {r['plan_per_1000']:.1f} |"
                )
            for variant in ("before", "after"):
                last = [r for r in results if r["variant"] == variant][-1]
                print(f"\nTop statements, last '{variant}' run:\n")
                print("| statement | calls | rows | exec ms | plan ms |")
                print("|---|---|---|---|---|")
                for q, calls, nrows, ex, pl in last["top"]:
                    print(f"| `{q.strip()}` | {calls} | {nrows} | {ex:.0f} | {pl:.0f} |")
            for variant in ("before", "after"):
                print(f"\nEXPLAIN (ANALYZE, BUFFERS), {variant}:\n")
                print(_explain(url, variant))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
