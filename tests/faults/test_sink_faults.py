"""Sinks under faults, judged by the sink oracle (tests/support/sinks.py):
every committed matching event is in the broker — exactly once in a
JetStream stream, at least once with the same ``message_id`` in a RabbitMQ
queue — in commit order, and no rolled-back event is.

The faults: kill -9 of the process that publishes (two ``outbox serve``
processes; the other takes over), the broker stopped and restarted (a
private nats-server: the shared one is everyone's), a dropped AMQP
connection (a loopback proxy we cut), a slow broker (a proxy that holds
every chunk), a broker that refuses (permissions), and a PostgreSQL restart
(a private cluster). One writer, so commit order is id order; it rolls back
every tenth transaction on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from outbox.api.config import Settings
from outbox.cli.embedded import EmbeddedCluster
from outbox.events import Matcher
from outbox.migrate import migrate
from tests.faults.harness import Ledger, Writer, add_hook, settle, writing
from tests.faults.test_database_faults import private_cluster, restart_immediate
from tests.support.api import AUTH
from tests.support.receivers import running
from tests.support.relay import ServeProcess, TcpProxy, serve_processes
from tests.support.servers import serve_app
from tests.support.sinks import (
    AMQP_URL,
    NATS_URL,
    SlowProxy,
    StreamVerdict,
    amqp_queue,
    delete_stream,
    jetstream,
    need_amqp,
    need_nats,
    private_nats,
    settle_stream,
    stream_contents,
    unique,
)
from tests.support.waiting import wait_for

__all__ = ["private_cluster"]  # a fixture, used by test_sink_survives_a_postgres_restart

PATTERNS = ("fault.*",)
SERVE_ENV = {"OUTBOX_POLL_INTERVAL": "200ms"}

Fetch = Callable[[], Awaitable[list[Any]]]


@dataclasses.dataclass
class Target:
    """Where a sink publishes and how the test reads what arrived."""

    body: dict[str, Any]
    fetch: Fetch
    exactly_once: bool


@contextlib.asynccontextmanager
async def target(kind: str, url: str | None = None) -> AsyncIterator[Target]:
    """A JetStream stream (created by the sink) or a bound RabbitMQ queue of
    this test's own; ``url`` overrides the broker URL (a proxy, a private server)."""
    prefix = unique("f")
    if kind == "nats":
        need_nats()
        stream = unique("F_")
        broker = url or NATS_URL

        async def fetch() -> list[Any]:
            return await stream_contents(broker, stream)

        body = {"url": broker, "subject": prefix + ".{type}", "stream": stream}
        try:
            yield Target(body, fetch, exactly_once=True)
        finally:
            await delete_stream(broker, stream)
    else:
        need_amqp()
        async with amqp_queue("amq.topic", prefix + ".#") as queue:

            async def fetch() -> list[Any]:
                return list(queue.received)

            body = {"url": url or AMQP_URL, "routing_key": prefix + ".{type}"}
            yield Target(body, fetch, exactly_once=False)


async def create_sink(base_url: str, name: str, t: Target) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=10) as client:
        r = await client.post(
            "/sinks", json={"name": name, "event_types": list(PATTERNS), **t.body}
        )
    assert r.status_code == 201, r.text
    sink: dict[str, Any] = r.json()
    return sink


async def get_sink(base_url: str, sink_id: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=10) as client:
        r = await client.get(f"/sinks/{sink_id}")
    assert r.status_code == 200, r.text
    sink: dict[str, Any] = r.json()
    return sink


async def judged(t: Target, ledger: Ledger, db_url: str, timeout: float = 60) -> StreamVerdict:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await ledger.resolve(c)
    return await settle_stream(
        t.fetch,
        ledger.committed,
        ledger.rolled_back,
        Matcher(list(PATTERNS)),
        sorted(ledger.committed),
        exactly_once=t.exactly_once,
        timeout=timeout,
    )


async def arrived(t: Target, n: int) -> bool:
    return len(await t.fetch()) >= n


def fast(settings: Settings) -> Settings:
    return settings.replace(poll_interval=0.2)


@pytest.mark.parametrize("kind", ["nats", "amqp"])
async def test_kill_9_of_the_publishing_process_mid_stream(
    db_url: str, tmp_path: Path, kind: str
) -> None:
    ledger = Ledger()
    async with target(kind) as t:
        with serve_processes() as procs:
            a = ServeProcess(db_url, tmp_path / "a.log", env=SERVE_ENV)
            b = ServeProcess(db_url, tmp_path / "b.log", env=SERVE_ENV)
            procs += [a, b]
            await a.wait_ready()
            await b.wait_ready()
            sink = await create_sink(a.base_url, "k9", t)
            writer = Writer(db_url, ledger, total=800, rate=200)
            async with writing(writer):
                await wait_for(lambda: arrived(t, 100), timeout=30, what="100 published")
                owner = (await get_sink(a.base_url, sink["id"]))["owner"]
                healths = {p: await p.health() for p in (a, b)}
                (victim,) = [p for p, h in healths.items() if h and h["instance"] == owner]
                survivor = b if victim is a else a
                victim.kill()
                killed = time.monotonic()

                async def taken_over() -> bool:
                    h = await survivor.health()
                    return bool(h and [s["name"] for s in h["sinks"]["publishing"]] == ["k9"])

                await wait_for(taken_over, timeout=15, interval=0.05, what="the takeover")
                takeover = time.monotonic() - killed
            verdict = await judged(t, ledger, db_url)
    assert takeover < 5, f"the survivor took {takeover:.1f}s to take the sink over"
    assert verdict.expected > 200 and not verdict.missing, verdict


async def test_nats_server_stopped_and_restarted_mid_stream(settings: Settings) -> None:
    ledger = Ledger()
    with private_nats() as server:
        await server.wait_ready()
        async with target("nats", server.url) as t, serve_app(fast(settings)) as app:
            sink = await create_sink(app.base_url, "restart", t)
            writer = Writer(settings.database.url, ledger, total=800, rate=200)
            async with writing(writer):
                await wait_for(lambda: arrived(t, 150), timeout=30, what="150 published")
                server.stop()  # SIGTERM: JetStream flushes and shuts down

                async def failing() -> bool:
                    return bool((await get_sink(app.base_url, sink["id"]))["last_error"])

                await wait_for(failing, timeout=20, what="last_error while the broker is down")
                server.start()
                await server.wait_ready()
            verdict = await judged(t, ledger, settings.database.url)
            after = await get_sink(app.base_url, sink["id"])
    assert verdict.expected > 300 and verdict.repeats == 0, verdict
    assert after["last_error"] is None, after


async def test_amqp_connection_dropped_mid_stream(settings: Settings) -> None:
    need_amqp()
    ledger = Ledger()
    async with TcpProxy(target_port=5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with target("amqp", url) as t, serve_app(fast(settings)) as app:
            sink = await create_sink(app.base_url, "dropped", t)
            writer = Writer(settings.database.url, ledger, total=800, rate=200)
            async with writing(writer):
                await wait_for(lambda: arrived(t, 150), timeout=30, what="150 published")
                proxy.cut()

                async def failing() -> bool:
                    return bool((await get_sink(app.base_url, sink["id"]))["last_error"])

                await wait_for(failing, timeout=20, what="last_error while cut off")
                proxy.restore()
            verdict = await judged(t, ledger, settings.database.url)
    assert verdict.expected > 300, verdict


async def test_a_slow_broker_holds_back_no_other_sink_and_no_webhook(
    settings: Settings, aconn: psycopg.AsyncConnection[Any]
) -> None:
    need_nats()
    ledger = Ledger()
    async with (
        SlowProxy(4222, delay=0.25) as proxy,
        target("nats", proxy.url()) as slow,
        target("nats") as quick,
        running() as rx,
    ):
        hook = await add_hook(aconn, rx, PATTERNS)
        async with serve_app(fast(settings)) as app:
            await create_sink(app.base_url, "slow", slow)
            await create_sink(app.base_url, "quick", quick)
            writer = Writer(settings.database.url, ledger, total=400, rate=200)
            async with writing(writer):
                pass
            # The quick sink and the webhook are done while the slow one,
            # at a quarter of a second per round trip, is still behind.
            await judged(quick, ledger, settings.database.url, timeout=15)
            await settle(settings.database.url, ledger, [hook], timeout=30)
            verdict = await judged(slow, ledger, settings.database.url, timeout=90)
    assert verdict.expected > 150, verdict


PERMISSIONS = """
users = [
  { user: admin, password: admin }
  { user: outbox, password: "s3cret-pw", permissions: {
      publish: { allow: ["ok.>", "$JS.API.>"] }
      subscribe: { allow: ["_INBOX.>"] } } }
]
"""


async def test_a_refusing_broker_is_shown_and_nothing_is_skipped(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    with private_nats(PERMISSIONS) as server:
        await server.wait_ready()
        admin = f"nats://admin:admin@127.0.0.1:{server.port}"
        async with jetstream(admin) as js:
            await js.add_stream(name="PERM", subjects=["ok.>", "no.>"])
        async with (
            serve_app(fast(settings)) as app,
            httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=10) as client,
        ):
            url = f"nats://outbox:s3cret-pw@127.0.0.1:{server.port}"
            r = await client.post(
                "/sinks", json={"name": "perm", "url": url, "subject": "no.{type}"}
            )
            sink = r.json()
            ids = [
                int(conn.execute("SELECT outbox.publish('fault.a', %s)", (f'{{"n": {i}}}',))
                    .fetchone()[0])  # type: ignore[index]
                for i in range(5)
            ]  # fmt: skip

            async def failing() -> dict[str, Any] | None:
                s: dict[str, Any] = (await client.get(f"/sinks/{sink['id']}")).json()
                return s if s["last_error"] else None

            s = await wait_for(failing, timeout=20, what="last_error")
            assert "permissions violation" in s["last_error"].lower(), s
            assert "s3cret-pw" not in s["last_error"] and s["published_count"] == 0
            # The operator fixes the subject: everything arrives, from the first event.
            r = await client.patch(f"/sinks/{sink['id']}", json={"subject": "ok.{type}"})
            assert r.status_code == 200, r.text

            async def delivered() -> bool:
                got = await stream_contents(admin, "PERM")
                return [m.event_id for m in got] == ids

            await wait_for(delivered, timeout=20, what="the events after the fix")


async def test_sink_survives_a_postgres_restart(private_cluster: EmbeddedCluster) -> None:
    need_nats()
    url = await asyncio.to_thread(private_cluster.start)
    with psycopg.connect(url) as c:
        migrate(c)
    settings = Settings.load(
        database_url=url,
        api_token="test-token",
        poll_interval=0.2,
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    ledger = Ledger()
    async with target("nats") as t, serve_app(settings) as app:
        await create_sink(app.base_url, "pg", t)
        writer = Writer(url, ledger, total=1000, rate=250)
        async with writing(writer):
            await wait_for(lambda: writer.written >= 300, timeout=20, what="writes")
            await asyncio.to_thread(restart_immediate, private_cluster)
        verdict = await judged(t, ledger, url, timeout=60)
    assert writer.reconnects >= 1
    assert verdict.expected > 300, verdict
