"""``outbox serve`` processes dying in the middle of deliveries: kill -9 of
the only process, kill -9 of one of two, and SIGTERM. Real processes,
because the fault is the process itself; the receivers, writers and
WebSocket clients run in the test and the oracle judges every event.

A few requests are held open by the receiver when the process dies, so the
fault always lands on deliveries in flight; another process sends them again
once their lease runs out (2 s here), with the same id and body.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.faults.harness import Hook, Ledger, Verdict, Writer, add_hook, settle, writing
from tests.faults.wsclients import ResumingClient, connected, running_clients
from tests.support.receivers import Action, Hang, Receiver, Reply, Request, running
from tests.support.relay import ServeProcess, serve_processes
from tests.support.waiting import wait_for

SERVE_ENV = {
    "OUTBOX_LEASE": "2s",
    "OUTBOX_WEBHOOK_TIMEOUT": "1",
    "OUTBOX_RETRY_SCHEDULE": "100ms,200ms,400ms,800ms,1600ms",
    "OUTBOX_POLL_INTERVAL": "200ms",
}
HELD = 5  # requests the receiver holds open when the fault strikes


def holding(first: int) -> Any:
    """A handler that holds requests ``first`` .. ``first + HELD - 1`` open."""
    count = 0

    def handler(_req: Request) -> Action:
        nonlocal count
        count += 1
        return Hang() if first <= count < first + HELD else Reply()

    return handler


def ws_url(p: ServeProcess) -> str:
    return f"ws://127.0.0.1:{p.port}/ws"


def serve(db_url: str, tmp_path: Path, name: str) -> ServeProcess:
    return ServeProcess(db_url, tmp_path / f"{name}.log", env=SERVE_ENV)


async def two_hooks(aconn: psycopg.AsyncConnection[Any], a: Receiver, b: Receiver) -> list[Hook]:
    return [await add_hook(aconn, a, ("fault.*",)), await add_hook(aconn, b, ("fault.b",))]


async def replace_mid_delivery(
    db_url: str,
    aconn: psycopg.AsyncConnection[Any],
    tmp_path: Path,
    strike: Callable[[ServeProcess], Awaitable[None]],
) -> tuple[Verdict, list[ResumingClient], ServeProcess]:
    """One process serves writers, receivers and clients; ``strike`` ends it
    with requests in flight, a second process takes over, the oracle judges."""
    ledger = Ledger()
    async with running(holding(60)) as rx, running() as rx2:
        hooks = await two_hooks(aconn, rx, rx2)
        with serve_processes() as procs:
            first = serve(db_url, tmp_path, "first")
            procs.append(first)
            await first.wait_ready()
            urls = [ws_url(first)]
            clients = [ResumingClient(f"c{i}", urls, drop_every=150) for i in range(3)]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(db_url, ledger, total=800, rate=250)
                async with writing(writer):
                    await wait_for(lambda: len(rx.requests) >= 60 + HELD, timeout=30)
                    await strike(first)
                    rx.release.set()
                    second = serve(db_url, tmp_path, "second")
                    procs.append(second)
                    urls[:] = [ws_url(second)]
                    await second.wait_ready()
                verdict = await settle(db_url, ledger, hooks, clients, timeout=40)
    return verdict, clients, first


async def test_kill_9_of_the_only_process_mid_delivery(
    db_url: str, aconn: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    async def kill(p: ServeProcess) -> None:
        p.kill()

    verdict, clients, _ = await replace_mid_delivery(db_url, aconn, tmp_path, kill)
    assert verdict.delivered == verdict.pairs, verdict.summary()
    assert verdict.repeated >= HELD, verdict.summary()  # the held ones, sent again
    assert all(c.connects >= 2 for c in clients)


async def test_kill_9_of_one_of_two_processes_mid_delivery(
    db_url: str, aconn: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    ledger = Ledger()
    async with running(holding(60)) as rx, running() as rx2:
        hooks = await two_hooks(aconn, rx, rx2)
        with serve_processes() as procs:
            a, b = serve(db_url, tmp_path, "a"), serve(db_url, tmp_path, "b")
            procs += [a, b]
            await a.wait_ready()
            await b.wait_ready()
            urls_a, urls_b = [ws_url(a)], [ws_url(b)]
            clients = [ResumingClient("on-a", urls_a), ResumingClient("on-b", urls_b)]
            async with running_clients(clients):
                await wait_for(lambda: connected(clients), what="ws connected")
                writer = Writer(db_url, ledger, total=800, rate=250)
                async with writing(writer):
                    await wait_for(lambda: len(rx.requests) >= 60 + HELD, timeout=30)
                    # Both processes send, so either may hold the held requests:
                    # kill the one that holds the most, so the fault lands on
                    # deliveries in flight. (Leadership moves with it when it
                    # leads; the only-process test always moves it.)
                    holders = await held_by(db_url, hooks[0], rx.requests[59 : 59 + HELD])
                    victim = a if holders.get(a.proc.pid, 0) >= holders.get(b.proc.pid, 0) else b
                    in_flight = holders.get(victim.proc.pid, 0)
                    victim.kill()
                    rx.release.set()
                    survivor = b if victim is a else a
                    urls_a[:] = urls_b[:] = [ws_url(survivor)]
                verdict = await settle(db_url, ledger, hooks, clients, timeout=40)
    assert in_flight >= 1, holders
    assert verdict.delivered == verdict.pairs, verdict.summary()
    # The victim's held requests, sent again by the survivor.
    assert verdict.repeated >= in_flight, verdict.summary()


async def held_by(db_url: str, hook: Hook, held: list[Request]) -> dict[int, int]:
    """How many of the ``held`` requests each serve process (by pid) has claimed.

    A claim stamps ``locked_by`` with the worker id, ``host:pid:random``.
    """
    ids = [int(r.headers["webhook-id"].removeprefix("evt_")) for r in held]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT split_part(locked_by, ':', 2)::int, count(*) FROM outbox.deliveries"
            " WHERE webhook_id = %s AND event_id = ANY(%s) AND locked_by IS NOT NULL"
            " GROUP BY 1",
            (hook.id, ids),
        )
        return {int(pid): int(n) for pid, n in await cur.fetchall()}


async def test_sigterm_mid_delivery_exits_cleanly_and_loses_nothing(
    db_url: str, aconn: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    async def terminate(p: ServeProcess) -> None:
        p.signal(signal.SIGTERM)
        assert await p.wait(timeout=20) == 0, p.log()

    verdict, clients, first = await replace_mid_delivery(db_url, aconn, tmp_path, terminate)
    assert "Traceback" not in first.log(), first.log()
    assert verdict.delivered == verdict.pairs, verdict.summary()
    # Clients saw a close (1001/1012) or a dropped socket, and resumed elsewhere.
    assert all(c.connects >= 2 for c in clients)
