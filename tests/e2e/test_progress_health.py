"""Progress is health, and event ids never go backwards, through a real
``outbox serve`` on loopback: a dispatcher whose statement hangs, a
leadership that keeps flipping because every dispatch fails, a feed reader
whose reads fail, ``TRUNCATE ... RESTART IDENTITY`` and a sequence reset
(refused, then repaired with ``outbox repair --fix-sequence``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.paths import ROOT
from tests.support.receivers import running
from tests.support.relay import ServeProcess, serve_processes
from tests.support.servers import serve_app
from tests.support.waiting import wait_for

STALL = {"OUTBOX_STALL_AFTER": "2s"}


async def _health(p: ServeProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(p.base_url + "/health")
    body: dict[str, Any] = r.json()
    assert (r.status_code == 503) == (body["status"] == "degraded")
    return body


async def _degraded(p: ServeProcess, part: str, timeout: float = 20) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await _health(p)
        named = [x for x in body["problems"] if x.startswith(f"{part}:")]
        return body if named else None

    return dict(await wait_for(check, timeout=timeout, interval=0.2, what=f"{part} degraded"))


async def _metric(p: ServeProcess, line_start: str) -> str:
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(p.base_url + "/metrics", headers={"Authorization": "Bearer test-token"})
    lines = [x for x in r.text.splitlines() if x.startswith(line_start)]
    assert lines, r.text
    return lines[0]


def _publish(db_url: str, n: int, kind: str = "load.tick") -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        for i in range(n):
            c.execute("SELECT outbox.publish(%s, jsonb_build_object('i', %s::int))", (kind, i))


async def test_a_dispatcher_whose_statement_hangs_is_degraded_and_says_why(
    db_url: str, tmp_path: Path
) -> None:
    with serve_processes() as procs:
        p = ServeProcess(db_url, tmp_path / "serve.log", env=STALL)
        procs.append(p)
        await p.wait_ready()
        await wait_for(lambda: _role_is_leader(p), timeout=10, interval=0.1, what="leader")
        with psycopg.connect(db_url) as locker:
            # Writes to the dispatcher's cursor row wait; reads (the health check's) do not.
            locker.execute("LOCK TABLE outbox.relay_state IN EXCLUSIVE MODE")
            await asyncio.to_thread(_publish, db_url, 5)
            body = await _degraded(p, "dispatcher")
            problem = next(x for x in body["problems"] if x.startswith("dispatcher:"))
            assert "no progress for" in problem and "5 events wait" in problem, problem
            assert "dispatch running for" in problem, problem
            assert body["dispatcher"]["lag"]["events"] == 5
            assert not any(x.startswith("feed") for x in body["problems"]), body["problems"]
            assert await _metric(p, 'outbox_degraded{part="dispatcher"}') == (
                'outbox_degraded{part="dispatcher"} 1.0'
            )
            locker.rollback()

        async def healthy() -> bool:
            return (await _health(p))["status"] == "ok"

        await wait_for(healthy, timeout=15, interval=0.2, what="healthy again")
        assert await _metric(p, 'outbox_degraded{part="dispatcher"}') == (
            'outbox_degraded{part="dispatcher"} 0.0'
        )


async def _role_is_leader(p: ServeProcess) -> bool:
    return (await _health(p)).get("role") == "leader"


@pytest.fixture
def lock_timeout_url(db_url: str) -> Any:
    """The same database through a role whose every statement gives up on a lock
    after 300 ms (ALTER ROLE ... SET), as an operator's role setting would."""
    role = f"outbox_t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        c.execute(f"ALTER ROLE {role} SET lock_timeout = '300ms'")
    params = conninfo_to_dict(db_url)
    params["user"] = role
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            c.execute(f"DROP ROLE IF EXISTS {role}")


async def test_a_flapping_leadership_is_degraded_naming_the_dispatcher(
    db_url: str, lock_timeout_url: str, tmp_path: Path
) -> None:
    with serve_processes() as procs:
        p = ServeProcess(lock_timeout_url, tmp_path / "serve.log", env=STALL)
        procs.append(p)
        await p.wait_ready()
        await wait_for(lambda: _role_is_leader(p), timeout=10, interval=0.1, what="leader")
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE outbox.relay_state IN EXCLUSIVE MODE")
            await asyncio.to_thread(_publish, db_url, 3)

            async def flapping() -> dict[str, Any] | None:
                body = await _health(p)
                named = [x for x in body["problems"] if x.startswith("dispatcher:")]
                return body if named and "changed hands" in named[0] else None

            body = await wait_for(flapping, timeout=30, interval=0.3, what="flapping reported")
            problem = next(x for x in body["problems"] if x.startswith("dispatcher:"))
            assert "lock timeout" in problem, problem
            assert "3 events wait" in problem, problem
            locker.rollback()

        async def healthy() -> bool:
            return (await _health(p))["status"] == "ok"

        await wait_for(healthy, timeout=20, interval=0.3, what="healthy again")


async def test_a_feed_reader_whose_reads_fail_is_degraded_naming_the_feed(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import outbox.relay.runtime as runtime

    real = runtime.read_batch
    failing = asyncio.Event()

    async def read_batch(*args: Any, **kwargs: Any) -> Any:
        if failing.is_set():
            raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        return await real(*args, **kwargs)

    monkeypatch.setattr(runtime, "read_batch", read_batch)
    settings = settings.replace(stall_after=1.0)
    async with serve_app(settings) as srv, httpx.AsyncClient(base_url=srv.base_url) as client:
        await wait_for(
            lambda: srv.app.state.outbox.service.cursor is not None, timeout=10, what="relay"
        )
        failing.set()
        await asyncio.to_thread(_publish, settings.database.url, 4)

        async def degraded() -> dict[str, Any] | None:
            body = (await client.get("/health")).json()
            named = [x for x in body["problems"] if x.startswith("feed:")]
            return body if named else None

        body = await wait_for(degraded, timeout=15, interval=0.2, what="feed degraded")
        problem = next(x for x in body["problems"] if x.startswith("feed:"))
        assert "4 events wait" in problem and "statement timeout" in problem, problem
        failing.clear()

        async def healthy() -> bool:
            return (await client.get("/health")).json()["status"] == "ok"

        await wait_for(healthy, timeout=15, interval=0.2, what="feed healthy again")


# --- ids never go backwards ----------------------------------------------------


def _repair(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "repair", *args, "--database-url", db_url],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
    )


async def _hook(p: ServeProcess, url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(
            p.base_url + "/webhooks",
            headers={"Authorization": "Bearer test-token"},
            json={"name": "ids", "url": url, "event_types": ["load.*"]},
        )
    assert r.status_code == 201, r.text


async def test_truncate_restart_identity_keeps_ids_growing(db_url: str, tmp_path: Path) -> None:
    async with running() as receiver:
        with serve_processes() as procs:
            p = ServeProcess(db_url, tmp_path / "serve.log", env=STALL)
            procs.append(p)
            await p.wait_ready()
            await _hook(p, receiver.url)
            await asyncio.to_thread(_publish, db_url, 5)
            await wait_for(lambda: len(receiver.requests) >= 5, timeout=20, what="5 deliveries")
            with psycopg.connect(db_url, autocommit=True) as c:
                c.execute("TRUNCATE outbox.events RESTART IDENTITY")
            await asyncio.to_thread(_publish, db_url, 5, "load.after")
            await wait_for(lambda: len(receiver.requests) >= 10, timeout=20, what="10 deliveries")
            ids = [r.headers["webhook-id"] for r in receiver.requests]
            assert len(set(ids)) == 10, ids
            assert sorted(int(i.removeprefix("evt_")) for i in ids) == list(range(1, 11))
            assert (await _health(p))["status"] == "ok"
            assert _repair(db_url).returncode == 0


async def test_a_sequence_reset_is_refused_then_repaired(db_url: str, tmp_path: Path) -> None:
    async with running() as receiver:
        with serve_processes() as procs:
            p = ServeProcess(db_url, tmp_path / "serve.log", env=STALL)
            procs.append(p)
            await p.wait_ready()
            await _hook(p, receiver.url)
            await asyncio.to_thread(_publish, db_url, 5)
            await wait_for(lambda: len(receiver.requests) >= 5, timeout=20, what="5 deliveries")
            with psycopg.connect(db_url, autocommit=True) as c:
                # What the guard cannot see: the sequence itself set back.
                c.execute("TRUNCATE outbox.events")
                c.execute("ALTER SEQUENCE outbox.events_id_seq RESTART")
            await asyncio.to_thread(_publish, db_url, 3, "load.after")
            body = await _degraded(p, "dispatcher")
            problem = next(x for x in body["problems"] if x.startswith("dispatcher:"))
            assert "event ids went backwards" in problem
            assert "outbox repair --fix-sequence" in problem
            # Refused: no receiver sees evt_1..3 again for a different event.
            await asyncio.sleep(1.0)
            assert len(receiver.requests) == 5
            diagnosis = _repair(db_url)
            assert diagnosis.returncode == 1
            assert "event ids went backwards" in diagnosis.stdout
            assert "--fix-sequence" in diagnosis.stderr
            fixed = _repair(db_url, "--fix-sequence")
            assert fixed.returncode == 0, fixed.stderr
            assert "3 events not yet dispatched got fresh ids (1..3 -> 6..8)" in fixed.stdout
            await wait_for(lambda: len(receiver.requests) >= 8, timeout=20, what="8 deliveries")
            seen: dict[str, bytes] = {}
            for r in receiver.requests:
                wid = r.headers["webhook-id"]
                assert seen.setdefault(wid, r.body) == r.body, f"{wid} reused for another body"
            assert sorted(seen) == sorted(f"evt_{i}" for i in range(1, 9))
            assert (await _health(p))["status"] == "ok"
            assert _repair(db_url).returncode == 0
