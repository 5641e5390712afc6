"""The composition root (relay/service.py): one start, one stop(grace), one
status; if one part dies, every part stops."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from outbox.errors import RelayError
from outbox.relay.service import Service, ServiceStatus
from tests.support.relay import Recorder, relay_settings


def _service(db_url: str) -> Service:
    rec = Recorder()
    return Service(relay_settings(db_url, poll_interval=0.2), hub=rec, sender=rec)


async def test_start_status_stop(db_url: str) -> None:
    service = _service(db_url)
    assert service.status().state == "new"
    await service.start()
    try:
        status = service.status()
        assert isinstance(status, ServiceStatus)
        assert status.state == "running" and status.failure is None
        assert status.feed.state == "ok" and status.feed.cursor is not None
        assert status.instance == service.instance
    finally:
        began = time.monotonic()
        await asyncio.wait_for(service.stop(grace=10), timeout=20)
    assert time.monotonic() - began < 5  # nothing held: every part stops at once
    assert service.status().state == "stopped"
    assert service.listener is not None and service.listener.state == "stopped"
    await asyncio.wait_for(service.wait(), timeout=1)


async def test_one_part_fails_and_every_part_stops(db_url: str) -> None:
    service = _service(db_url)

    async def broken() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("retention blew up")

    service.retention.run = broken  # type: ignore[method-assign]
    await service.start()
    try:
        await asyncio.wait_for(service.wait(), timeout=10)
        assert isinstance(service.failure, RuntimeError)
        assert "retention blew up" in str(service.failure)
        assert service.status().state == "failed"
        assert "retention blew up" in (service.status().failure or "")
        # The others were cancelled with it: the listener no longer listens.
        assert service.listener is not None and service.listener.state == "stopped"
    finally:
        await asyncio.wait_for(service.stop(grace=5), timeout=15)
    assert service.status().state == "failed"


async def test_a_part_that_ends_by_itself_stops_the_service(db_url: str) -> None:
    service = _service(db_url)

    async def quits() -> None:
        return

    service.capture_check.run = quits  # type: ignore[method-assign]
    await service.start()
    try:
        await asyncio.wait_for(service.wait(), timeout=10)
        assert isinstance(service.failure, RelayError)
        assert "relay-capture-check stopped by itself" in str(service.failure)
    finally:
        await asyncio.wait_for(service.stop(grace=5), timeout=15)


async def test_stop_grace_is_a_bound_then_parts_are_cancelled(db_url: str) -> None:
    service = _service(db_url)
    cancelled = asyncio.Event()

    async def deaf() -> None:
        # Ignores stop(); only cancellation ends it.
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    service.retention.run = deaf  # type: ignore[method-assign]
    await service.start()
    began = time.monotonic()
    await asyncio.wait_for(service.stop(grace=0.5), timeout=10)
    took = time.monotonic() - began
    assert cancelled.is_set()
    assert 0.5 <= took < 3, took
    assert service.status().state == "stopped"


async def test_start_fails_cleanly_without_a_database() -> None:
    service = Service(relay_settings("postgresql://postgres@127.0.0.1:1/none"))
    with pytest.raises(psycopg.OperationalError):
        await asyncio.wait_for(service.start(), timeout=20)
    assert service.status().state == "stopped"
    await asyncio.wait_for(service.stop(), timeout=5)


async def test_api_pool_reads_never_jit_compile(db_url: str) -> None:
    """The /ws catch-up and /events replay read the feed on the API pool's
    connections. Planned with a cursor inside a large late transaction (here
    30,000 rows, one page read), the feed statement's estimated cost passes
    jit_above_cost, and PostgreSQL spent ~0.9 s compiling each such read for
    ~2 ms of work (a resuming client got 200,000 late events in 208 s). The
    pool's sessions run with JIT off, as the relay's own do."""
    from outbox.cursor import sql_params
    from outbox.relay import feed
    from outbox.sqlfiles import bare_query

    service = _service(db_url)
    await service.start()
    try:
        writer = await psycopg.AsyncConnection.connect(db_url)
        try:
            await writer.execute(
                "INSERT INTO outbox.events (event_type, payload)"
                " SELECT 'big.row', jsonb_build_object('i', g) FROM generate_series(1, 30000) g"
            )
            async with service.pool.connection() as conn:
                # The big transaction drew the smaller ids; a small one commits
                # first and is read while the big one is still open.
                start = await feed.head(conn)
                await conn.execute("SELECT outbox.publish('small.one', '{}'::jsonb)")
                past = (await feed.read_batch(conn, start, 1000)).end
                await writer.commit()
                inside = (await feed.read_batch(conn, past, 1000)).end  # one late page in
                assert inside.done, inside  # the cursor points inside the transaction
                cur = await conn.execute("SELECT current_setting('jit')")
                assert (await cur.fetchone()) == ("off",)
                params = {**sql_params(inside), "limit": 1000, "walk_max": feed.RANGE_WALK_MAX}
                cur = await conn.execute(
                    "EXPLAIN (ANALYZE, FORMAT TEXT) " + bare_query("feed_read", "feed.sql"), params
                )
                plan = "\n".join(str(r[0]) for r in await cur.fetchall())
        finally:
            await writer.close()
    finally:
        await asyncio.wait_for(service.stop(grace=5), timeout=15)
    assert "JIT:" not in plan, plan
