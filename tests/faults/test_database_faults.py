"""The database misbehaving under the whole system: a PostgreSQL restart in
immediate mode under write load, worker connections terminated, and an
idle-in-transaction session holding an xid through the run. The app runs
in-process (these faults are the database's, not the process's); the
oracle judges every event.

The restart needs a server of our own: the main one is shared with the rest
of the suite, so a private throwaway cluster is made from the installed
server binaries (skipped, saying so, when there are none).
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from outbox.api.config import Settings
from outbox.cli.embedded import EmbeddedCluster, find_bindir
from outbox.migrate import migrate
from tests.faults.harness import (
    Ledger,
    Writer,
    add_hook,
    attempt_outcomes,
    fast_settings,
    settle,
    writing,
)
from tests.faults.wsclients import ResumingClient, connected, running_clients
from tests.support.receivers import running
from tests.support.servers import serve_app
from tests.support.waiting import wait_for

BINDIR = find_bindir()


@pytest.fixture
def private_cluster() -> Iterator[EmbeddedCluster]:
    """A throwaway cluster in a temp dir (as root it runs as ``postgres``,
    which must be able to reach the directory: hence 0755 under /tmp)."""
    if BINDIR is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) to restart")
    base = Path(tempfile.mkdtemp(prefix="outbox-fault-pg-", dir="/tmp"))
    base.chmod(0o755)
    cluster = EmbeddedCluster(BINDIR, base / "pg", log=lambda _: None)
    try:
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster._run(
                [str(BINDIR / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "stop"]
            )
        shutil.rmtree(base, ignore_errors=True)


def restart_immediate(cluster: EmbeddedCluster) -> None:
    """``pg_ctl restart -m immediate``: no shutdown checkpoint, crash recovery
    at start; every session is cut at once. The options of the first start
    are reused from postmaster.opts."""
    assert BINDIR is not None
    res = cluster._run(
        [
            str(BINDIR / "pg_ctl"),
            "-D",
            str(cluster.data),
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "-l",
            str(cluster.logfile),
            "restart",
        ]
    )
    assert res.returncode == 0, res.stderr or res.stdout


async def test_postgres_restart_under_write_load(private_cluster: EmbeddedCluster) -> None:
    url = await asyncio.to_thread(private_cluster.start)
    with psycopg.connect(url) as c:
        migrate(c)
    settings = fast_settings(
        Settings.load(
            database_url=url,
            api_token="test-token",
            webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        )
    )
    ledger = Ledger()
    async with (
        running() as rx,
        running() as rx2,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn,
    ):
        hooks = [await add_hook(aconn, rx, ("fault.*",)), await add_hook(aconn, rx2, ("fault.b",))]
        async with serve_app(settings) as app:
            clients = [ResumingClient(f"c{i}", [app.ws_url]) for i in range(2)]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(url, ledger, total=1000, rate=250)
                async with writing(writer):
                    await wait_for(lambda: writer.written >= 300, timeout=20, what="writes")
                    await asyncio.to_thread(restart_immediate, private_cluster)
                verdict = await settle(url, ledger, hooks, clients, timeout=60)
    assert writer.reconnects >= 1  # the writer did lose its session
    assert verdict.delivered + verdict.failed == verdict.pairs, verdict.summary()


async def test_worker_connections_terminated_mid_delivery(
    settings: Any, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    ledger = Ledger()
    terminated = 0

    async def terminate_workers() -> None:
        nonlocal terminated
        cur = await aconn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND (application_name LIKE 'outbox-delivery-%'"
            " OR application_name LIKE 'outbox leader %')"
        )
        row = await cur.fetchone()
        terminated += int(row[0]) if row else 0

    async with running() as rx, running() as rx2:
        hooks = [await add_hook(aconn, rx, ("fault.*",)), await add_hook(aconn, rx2, ("fault.b",))]
        async with serve_app(fast_settings(settings)) as app:
            clients = [ResumingClient("ws", [app.ws_url])]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(db_url, ledger, total=900, rate=250)
                async with writing(writer):
                    # Six strikes, each once the receivers have moved on.
                    for n in range(1, 7):

                        def moved_on(n: int = n) -> bool:
                            return len(rx.requests) >= 80 * n or writer.written >= 900

                        await wait_for(moved_on, timeout=20, what="deliveries between strikes")
                        await terminate_workers()
                verdict = await settle(db_url, ledger, hooks, clients, timeout=40)
    assert terminated >= 4, terminated
    assert verdict.delivered == verdict.pairs, verdict.summary()


async def test_idle_in_transaction_session_holding_an_xid(
    settings: Any, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    """Two sessions publish an event first thing and then sit idle in their
    transactions through the run: everyone else's events flow meanwhile;
    at the end one commits (an old id, committed late: it must still be
    delivered and streamed) and one rolls back (it must appear nowhere)."""
    ledger = Ledger()
    async with running() as rx, running() as rx2:
        hooks = [await add_hook(aconn, rx, ("fault.*",)), await add_hook(aconn, rx2, ("fault.a",))]
        held: list[tuple[psycopg.AsyncConnection[Any], int]] = []
        try:
            for _ in range(2):
                c = await psycopg.AsyncConnection.connect(db_url)
                cur = await c.execute(
                    "SELECT outbox.publish('fault.a', %s)", (Jsonb({"held": True}),)
                )
                row = await cur.fetchone()
                assert row is not None
                held.append((c, int(row[0])))
            async with serve_app(fast_settings(settings)) as app:
                clients = [ResumingClient(f"c{i}", [app.ws_url], drop_every=120) for i in range(2)]
                async with running_clients(clients):
                    await wait_for(lambda: connected(clients), what="ws connected")
                    writer = Writer(db_url, ledger, total=600, rate=300)
                    async with writing(writer):
                        pass
                    # Everything else arrives while the xids are still held.
                    await settle(db_url, ledger, hooks, clients, timeout=30)
                    (late, late_id), (gone, gone_id) = held
                    await late.commit()
                    await gone.rollback()
                    ledger.committed[late_id] = ("fault.a", {"held": True})
                    ledger.rolled_back.add(gone_id)
                    verdict = await settle(db_url, ledger, hooks, clients, timeout=30)
        finally:
            for c, _ in held:
                await c.close()
    assert late_id < max(ledger.committed)  # it was the oldest id, committed last
    assert verdict.delivered == verdict.pairs, verdict.summary()
    assert (await attempt_outcomes(aconn)).get("success", 0) >= verdict.pairs
