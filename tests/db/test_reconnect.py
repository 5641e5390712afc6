"""relay/reconnect.py: the one reconnect helper every loop that holds a
connection uses (feed loop, listener, leader, delivery claimer and recorder, sinks)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from outbox.relay.reconnect import CONNECTION_ERRORS, Reconnecting


async def test_a_killed_connection_is_replaced_after_a_backoff(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    stop = asyncio.Event()
    db = Reconnecting(db_url, "outbox test reconnect", what="test read", wake=stop)
    first = await db.connection()
    assert await db.connection() is first  # the open one, not a new one
    db.ok()
    assert db.state == "connected"
    conn.execute("SELECT pg_terminate_backend(%s)", (first.info.backend_pid,))
    try:
        await first.execute("SELECT 1")
        raise AssertionError("the terminated session answered")
    except CONNECTION_ERRORS as exc:
        began = time.monotonic()
        await asyncio.wait_for(db.failed(exc), timeout=5)
        assert time.monotonic() - began < 1  # the first retry comes after 25-50 ms
    assert db.state == "reconnecting" and db.last_error and db.reconnects == 1
    assert first.closed
    second = await db.connection()
    assert second is not first and not second.closed
    await second.execute("SELECT 1")
    db.ok()
    assert (db.state, db.last_error, db.failures) == ("connected", None, 0)
    await db.close()
    assert second.closed


async def test_a_long_backoff_is_cut_short_by_a_wake_up() -> None:
    wake = asyncio.Event()
    db = Reconnecting(
        "postgresql://postgres@127.0.0.1:1/none", "outbox test", what="test", wake=wake
    )
    try:
        await db.connection()
        raise AssertionError("nothing listens on port 1")
    except CONNECTION_ERRORS as exc:
        failure = exc
    db.failures = 8  # the ninth wait in a row: 2.5-5 s
    waiting = asyncio.create_task(db.failed(failure))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    wake.set()  # a stop, or new work
    await asyncio.wait_for(waiting, timeout=1)
    assert db.failures == 9 and db.reconnects == 1 and db.state == "reconnecting"
