"""Profile of the feed read on the database side (issue 22 item 1, partial).

Starts a PRIVATE cluster (initdb into a temp dir, unix socket only,
``shared_preload_libraries = pg_stat_statements``), migrates it, and runs
16 single-row writers for a few seconds beside either two feed readers (the
old shape of a leader: WebSocket feed loop + dispatcher, each
``read_batch`` every 1 ms) or one (the shape after issue 22 item 2),
interleaved. Reports per variant: events written, ``feed_read`` calls and
database execution time per 1,000 events (pg_stat_statements), and one
``EXPLAIN (ANALYZE, BUFFERS)`` of the feed statement under load.

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

from outbox.cli.embedded import EmbeddedCluster, find_bindir
from outbox.cursor import Cursor, sql_params
from outbox.migrate import migrate
from outbox.relay.feed import head, read_batch
from outbox.sqlfiles import query

WRITERS = 16


def _writers(url: str, stop: threading.Event, counts: list[int]) -> list[threading.Thread]:
    def run(i: int) -> None:
        with psycopg.connect(url, autocommit=True) as c:
            while not stop.is_set():
                c.execute("SELECT outbox.publish('bench.row', '{\"n\": 1}')")
                counts[i] += 1

    return [threading.Thread(target=run, args=(i,), daemon=True) for i in range(WRITERS)]


async def _reader(url: str, stop: threading.Event) -> int:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    cursor = await head(conn)
    n = 0
    while not stop.is_set():
        batch = await read_batch(conn, cursor, 1000)
        cursor = batch.end
        n += len(batch.events)
        if not batch.more:
            await asyncio.sleep(0.001)
    await conn.close()
    return n


def _run(url: str, readers: int, seconds: float) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT pg_stat_statements_reset()")
    stop = threading.Event()
    counts = [0] * WRITERS
    threads = _writers(url, stop, counts)

    async def main() -> None:
        tasks = [asyncio.create_task(_reader(url, stop)) for _ in range(readers)]
        for t in threads:
            t.start()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    for t in threads:
        t.join()
    events = sum(counts)
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT query, calls, total_exec_time, rows FROM pg_stat_statements"
            " WHERE query LIKE '%%WITH snap AS MATERIALIZED%%'"
        ).fetchall()
    calls = sum(int(r[1]) for r in rows)
    ms = sum(float(r[2]) for r in rows)
    return {
        "events": events,
        "ev_per_s": events / seconds,
        "feed_calls": calls,
        "feed_ms": ms,
        "feed_ms_per_1000_events": ms / max(events, 1) * 1000,
    }


async def _head(url: str) -> Cursor:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await head(conn)


def _explain(url: str) -> str:
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
            params: dict[str, Any] = {**sql_params(cursor), "limit": 1000}
            plan = c.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query("feed_read", "feed.sql"), params
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
            f.write("\nshared_preload_libraries = 'pg_stat_statements'\n")
        url = cluster.start()
        try:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            with psycopg.connect(url) as c:
                migrate(c)
            results: dict[int, list[dict[str, float]]] = {2: [], 1: []}
            for _ in range(reps):
                for readers in (2, 1):
                    results[readers].append(_run(url, readers, seconds))
            print(
                "| readers | events/s | feed_read calls | feed_read DB ms"
                " | DB ms per 1,000 events |"
            )
            print("|---|---|---|---|---|")
            for readers, runs in results.items():
                for r in runs:
                    print(
                        f"| {readers} | {r['ev_per_s']:.0f} | {r['feed_calls']:.0f} |"
                        f" {r['feed_ms']:.0f} | {r['feed_ms_per_1000_events']:.1f} |"
                    )
            print()
            print(_explain(url))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
