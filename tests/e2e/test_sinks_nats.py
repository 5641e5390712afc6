"""JetStream sinks end to end: a sink created through the API, real
``outbox serve`` apps in-process, the NATS server on 127.0.0.1:4222, and
the sink oracle (tests/sink_support.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from outbox.api.config import Settings
from outbox.events import Matcher
from tests.support.api import AUTH
from tests.support.servers import serve_app
from tests.support.sinks import (
    NATS_URL,
    delete_stream,
    jetstream,
    need_nats,
    settle_stream,
    stream_contents,
    unique,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("_nats")


@pytest.fixture
def _nats() -> None:
    need_nats()


@pytest.fixture
async def names() -> AsyncIterator[tuple[str, str]]:
    """A stream name and a subject prefix of this test's own; the stream is
    deleted afterwards."""
    stream, prefix = unique("T_"), unique("t")
    try:
        yield stream, prefix
    finally:
        await delete_stream(NATS_URL, stream)


@contextlib.asynccontextmanager
async def client_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve_app(settings) as server,
        httpx.AsyncClient(base_url=server.base_url, headers=AUTH, timeout=10) as client,
    ):
        yield client


def publish(
    conn: psycopg.Connection[Any],
    events: list[tuple[str, Any]],
    *,
    rollback: bool = False,
) -> list[int]:
    ids = []
    with conn.transaction() as tx:
        for etype, payload in events:
            row = conn.execute("SELECT outbox.publish(%s, %s)", (etype, Jsonb(payload))).fetchone()
            assert row is not None
            ids.append(int(row[0]))
        if rollback:
            raise psycopg.Rollback(tx)
    return ids


async def test_every_matching_event_lands_once_in_commit_order(
    settings: Settings, conn: psycopg.Connection[Any], names: tuple[str, str]
) -> None:
    stream, prefix = names
    committed: dict[int, tuple[str, Any]] = {}
    rolled_back: set[int] = set()
    async with client_of(settings) as client:
        r = await client.post(
            "/sinks",
            json={
                "name": "js",
                "url": NATS_URL,
                "event_types": ["order.*"],
                "subject": prefix + ".{type}",
                "stream": stream,
            },
        )
        assert r.status_code == 201, r.text
        sink = r.json()
        for i in range(30):
            batch = [("order.created", {"n": i, "é": "ü"}), ("user.created", {"n": i})]
            batch.append(("order.paid", {"n": i, "nested": {"b": 2, "a": [1]}}))
            ids = publish(conn, batch, rollback=i % 7 == 3)
            if i % 7 == 3:
                rolled_back.update(ids)
            else:
                committed.update(zip(ids, batch, strict=True))

        async def fetch() -> list[Any]:
            return await stream_contents(NATS_URL, stream)

        verdict = await settle_stream(
            fetch,
            committed,
            rolled_back,
            Matcher(["order.*"]),
            sorted(committed),
            exactly_once=True,
            timeout=20,
        )
        assert verdict.expected == verdict.received > 0
        got = await fetch()
        first = got[0]
        assert first.subject == f"{prefix}.order.created"
        assert first.headers["Nats-Msg-Id"] == first.msg_id == f"evt_{first.event_id}"
        assert first.headers["Outbox-Event-Type"] == "order.created"
        assert "Outbox-Key" not in first.headers
        assert set(first.body) == {"id", "type", "timestamp", "key", "data"}
        assert first.body["id"] == first.msg_id and first.body["key"] is None

        async def counted() -> bool:
            s = (await client.get(f"/sinks/{sink['id']}")).json()
            return s["published_count"] == verdict.expected and s["lag"]["events"] == 0

        await wait_for(counted, timeout=15, what="published_count and lag")
        s = (await client.get(f"/sinks/{sink['id']}")).json()
        assert s["owner"] and s["last_error"] is None and s["cursor"] != sink["cursor"]

        # Replay from the beginning: the stream's duplicate window drops every repeat.
        r = await client.patch(f"/sinks/{sink['id']}", json={"since": "beginning"})
        assert r.status_code == 200

        async def replayed() -> bool:
            s = (await client.get(f"/sinks/{sink['id']}")).json()
            return s["published_count"] >= 2 * verdict.expected

        await wait_for(replayed, timeout=15, what="the replay")
        again = judge_after = await fetch()
        assert len(again) == verdict.expected, "a repeat inside the duplicate window was stored"
        assert [m.msg_id for m in judge_after] == [m.msg_id for m in got]


async def test_a_missing_stream_is_shown_and_waited_for(
    settings: Settings, conn: psycopg.Connection[Any], names: tuple[str, str]
) -> None:
    stream, prefix = names
    async with client_of(settings) as client:
        body = {"name": "nostream", "url": NATS_URL, "subject": prefix + ".{type}"}
        sink = (await client.post("/sinks", json=body)).json()
        ids = publish(conn, [("order.created", {"n": 1}), ("order.created", {"n": 2})])

        async def failing() -> dict[str, Any] | None:
            s: dict[str, Any] = (await client.get(f"/sinks/{sink['id']}")).json()
            return s if s["last_error"] else None

        s = await wait_for(failing, timeout=15, what="last_error")
        assert "no JetStream stream" in s["last_error"], s
        health = (await client.get("/health")).json()
        (mine,) = health["sinks"]["publishing"]
        assert mine["state"] == "retrying" and mine["last_error"]
        metrics = (await client.get("/metrics")).text
        assert 'outbox_sink_publish_failures{sink="nostream"}' in metrics

        async with jetstream() as js:
            await js.add_stream(name=stream, subjects=[prefix + ".>"])

        async def arrived() -> bool:
            return [m.event_id for m in await stream_contents(NATS_URL, stream)] == ids

        await wait_for(arrived, timeout=20, what="the events after the stream appeared")

        async def recovered() -> bool:
            s = (await client.get(f"/sinks/{sink['id']}")).json()
            return s["last_error"] is None and s["published_count"] == 2

        await wait_for(recovered, timeout=10, what="last_error cleared")


async def test_one_publisher_per_sink_and_a_quick_takeover(
    settings: Settings, conn: psycopg.Connection[Any], names: tuple[str, str]
) -> None:
    stream, prefix = names
    committed: dict[int, tuple[str, Any]] = {}
    fast = settings.replace(poll_interval=0.2)
    async with client_of(fast) as a:
        body = {"name": "shared", "url": NATS_URL, "subject": prefix + ".{type}", "stream": stream}
        sink = (await a.post("/sinks", json=body)).json()
        async with client_of(fast) as b:

            async def owned() -> list[str]:
                ha = (await a.get("/health")).json()["sinks"]["publishing"]
                hb = (await b.get("/health")).json()["sinks"]["publishing"]
                return [s["name"] for s in ha + hb]

            assert await wait_for(owned, timeout=10, what="an owner") == ["shared"]
            ids = publish(conn, [("order.created", {"n": 1})])
            committed.update({ids[0]: ("order.created", {"n": 1})})
            owner_first = (await a.get(f"/sinks/{sink['id']}")).json()["owner"]
            for _ in range(5):  # still exactly one, whichever it is
                assert await owned() == ["shared"]
        # b has stopped; if it was the owner, a takes over.
        assert await wait_for(owned_by(a), timeout=10, what="a publishes") == ["shared"]
        ids = publish(conn, [("order.created", {"n": 2})])
        committed.update({ids[0]: ("order.created", {"n": 2})})

        async def fetch() -> list[Any]:
            return await stream_contents(NATS_URL, stream)

        await settle_stream(
            fetch, committed, set(), Matcher(None), sorted(committed), exactly_once=True
        )
        assert owner_first


def owned_by(client: httpx.AsyncClient) -> Any:
    async def names() -> list[str]:
        return [s["name"] for s in (await client.get("/health")).json()["sinks"]["publishing"]]

    return names


# --- commit -> stream latency under a steady rate -----------------------------------

# A table bulk-loaded in few, large transactions (n_distinct(xid) = 10, each
# xid "a tenth of the table"): the statistics under which the feed read's
# cached generic plan once scanned the primary key for every xid it walked
# (tests/db/test_feed_plan.py), and B6's sink fell seconds behind at 1,000
# events/s and did not catch up while events flowed.
BULK_TRANSACTIONS = 10
BULK_ROWS = 3000
RATE = 500  # events/s, one per transaction
SECONDS = 4.0
# Far above a healthy sink on a loaded 2-core machine (tens of ms), far below
# the stall (seconds, growing with every read).
MAX_LATENCY_S = 2.0


async def test_commit_to_stream_stays_bounded_at_a_steady_rate(
    settings: Settings, aconn: psycopg.AsyncConnection[Any], names: tuple[str, str]
) -> None:
    import nats

    stream, prefix = names
    for t in range(BULK_TRANSACTIONS):
        await aconn.execute(
            "INSERT INTO outbox.events (event_type, payload)"
            " SELECT 'bulk.row', jsonb_build_object('t', %s::int, 'n', g)"
            " FROM generate_series(1, %s) AS g",
            (t, BULK_ROWS),
        )
    await aconn.execute("ANALYZE outbox.events")
    loop = asyncio.get_running_loop()
    arrived: dict[int, float] = {}

    async def on_message(msg: Any) -> None:
        arrived.setdefault(int(msg.headers["Outbox-Event-Id"][4:]), loop.time())

    nc = await nats.connect(NATS_URL, connect_timeout=5, allow_reconnect=False)
    try:
        # The server hands a core subscriber each message as the stream stores it.
        await nc.subscribe(prefix + ".>", cb=on_message, pending_msgs_limit=100_000)
        async with client_of(settings) as client:
            body = {
                "name": "steady",
                "url": NATS_URL,
                "event_types": ["steady.tick"],
                "subject": prefix + ".{type}",
                "stream": stream,
            }
            r = await client.post("/sinks", json=body)
            assert r.status_code == 201, r.text
            sink = r.json()

            async def publishing() -> bool:
                return bool((await client.get(f"/sinks/{sink['id']}")).json()["owner"])

            await wait_for(publishing, timeout=15, what="the sink's publisher")
            committed: dict[int, float] = {}
            n = int(RATE * SECONDS)
            t0 = loop.time()
            for i in range(n):
                ahead = t0 + i / RATE - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # the load's pacing (open loop)
                cur = await aconn.execute(
                    "SELECT outbox.publish('steady.tick', %s)", (Jsonb({"i": i}),)
                )
                row = await cur.fetchone()
                assert row is not None
                committed[int(row[0])] = loop.time()
            await wait_for(lambda: len(arrived) >= n, timeout=60, what=f"{n} events in the stream")
    finally:
        await nc.close()
    assert set(arrived) == set(committed)
    latencies = sorted(arrived[e] - t for e, t in committed.items())
    worst = latencies[-1]
    p99 = latencies[int(len(latencies) * 0.99)]
    assert worst < MAX_LATENCY_S, (
        f"commit -> stream stalled: max {worst:.2f}s, p99 {p99 * 1000:.0f} ms, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms at {RATE}/s"
    )
