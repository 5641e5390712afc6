"""Open-loop event writer for B2: one event per transaction at a fixed rate.

Run as ``python -m bench.writer URL --rate R --seconds D --conns K``. Event
``i`` is scheduled at ``t0 + i/R`` by the clock, whatever happened to the
events before it: when the database falls behind, the queue of due events
grows and shows up as lateness, instead of the writer quietly slowing down
(coordinated omission). Each event is committed in its own transaction on
one of K autocommit connections; ``commit_ns`` is taken the moment the
statement (and so the COMMIT) returns, with ``time.monotonic_ns`` —
CLOCK_MONOTONIC, one clock for every process on the host, so the receiving
client's timestamps compare with it directly.

Modes: ``publish`` (``outbox.publish``) and ``notify`` (the same publish plus
``pg_notify('bench_b2', run:seq)``, B2's baseline: the Postgres NOTIFY floor).

stdout: ``ready`` once connected; after ``{"cmd": "go"}`` on stdin, ``done``
with ``commits`` = [[seq, scheduled_ns, commit_ns], ...].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import psycopg

from bench.childio import commands, emit, run, wait_for_command
from bench.payloads import payload

SQL = {
    "publish": "SELECT outbox.publish('bench.tick', %(p)s::jsonb)",
    "notify": "SELECT outbox.publish('bench.tick', %(p)s::jsonb), pg_notify('bench_b2', %(n)s)",
}


async def main_async(args: argparse.Namespace) -> None:
    conns = [
        await psycopg.AsyncConnection.connect(args.url, autocommit=True) for _ in range(args.conns)
    ]
    stdin = await commands()
    emit(event="ready", conns=len(conns))
    if not await wait_for_command(stdin, "go"):
        return
    n = max(1, round(args.rate * args.seconds))
    period_ns = 1e9 / args.rate
    due: asyncio.Queue[int | None] = asyncio.Queue()
    commits: list[list[int]] = []
    t0 = time.monotonic_ns() + 20_000_000
    sql = SQL[args.mode]

    def sched(i: int) -> int:
        return t0 + int(i * period_ns)

    async def worker(conn: psycopg.AsyncConnection[Any]) -> None:
        while (i := await due.get()) is not None:
            body = json.dumps(payload(i, args.marker if i == n - 1 else "", args.run))
            await conn.execute(sql, {"p": body, "n": f"{args.run}:{i}"})
            commits.append([i, sched(i), time.monotonic_ns()])

    async def schedule() -> None:
        i = 0
        while i < n:
            now = time.monotonic_ns()
            while i < n and sched(i) <= now:
                due.put_nowait(i)
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, (sched(i) - time.monotonic_ns()) / 1e9))
        for _ in conns:
            due.put_nowait(None)

    timed_out = False
    try:
        async with asyncio.timeout(args.seconds * 3 + 30):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(schedule())
                for c in conns:
                    tg.create_task(worker(c))
    except TimeoutError:
        timed_out = True
    emit(event="done", commits=commits, scheduled=n, timed_out=timed_out)
    for c in conns:
        await c.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.writer", description=__doc__.split("\n")[0])
    p.add_argument("url")
    p.add_argument("--rate", type=float, required=True, help="events per second")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--mode", choices=sorted(SQL), default="publish")
    p.add_argument("--marker", default="", help="payload 'end' of the last event")
    p.add_argument("--run", default="", help="payload 'run' of every event")
    run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
