"""B2's latency client: one fully-parsing client recording receipt times.

Run as ``python -m bench.wsclient ws URL --run RUN --expect N`` (a
``websockets`` client: every frame parsed, every message ``json.loads``-ed,
as a real consumer would) or ``python -m bench.wsclient listen DBURL ...``
(B2's baseline: a psycopg LISTEN on ``bench_b2``, what Postgres itself gives).
Receipt times are ``time.time_ns()`` right after the message is handed over:
the wall clock, because the writer (pgbench) logs its commit times as Unix
time; one host, so one clock.

stdout: ``ready`` once subscribed, then ``done`` with ``recv`` = [[seq, ns]]
when all N events of this run arrived or ``--timeout`` passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.childio import emit, run


async def ws_mode(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    recv: dict[int, int] = {}
    async with connect(args.url, compression=None, ping_interval=None, max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "connection":
            raise RuntimeError(f"unexpected first message {hello!r}")
        emit(event="ready")
        try:
            async with asyncio.timeout(args.timeout):
                while len(recv) < args.expect:
                    raw = await ws.recv()
                    now = time.time_ns()
                    msg: dict[str, Any] = json.loads(raw)
                    p = msg.get("payload")
                    if isinstance(p, dict) and str(p.get("run")) == args.run:
                        recv.setdefault(int(p["seq"]), now)
        except TimeoutError:
            pass
    emit(event="done", recv=sorted(recv.items()), timed_out=len(recv) < args.expect)


async def listen_mode(args: argparse.Namespace) -> None:
    import psycopg

    recv: dict[int, int] = {}
    prefix = args.run + ":"
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        await conn.execute("LISTEN bench_b2")
        emit(event="ready")
        try:
            async with asyncio.timeout(args.timeout):
                async for note in conn.notifies():
                    now = time.time_ns()
                    if note.payload.startswith(prefix):
                        recv.setdefault(int(note.payload[len(prefix) :]), now)
                        if len(recv) >= args.expect:
                            break
        except TimeoutError:
            pass
    emit(event="done", recv=sorted(recv.items()), timed_out=len(recv) < args.expect)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.wsclient", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("ws", "listen"))
    p.add_argument("url", help="ws://... for ws, a database URL for listen")
    p.add_argument("--run", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    run(ws_mode(args) if args.mode == "ws" else listen_mode(args))


if __name__ == "__main__":
    main()
