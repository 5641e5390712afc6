"""Helpers for the relay tests: a recording hub and sender, an in-process
relay, a TCP proxy that can cut the relay off from Postgres, and
``outbox serve`` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from outbox.api.config import Settings
from outbox.relay.feed import Batch, Event
from outbox.relay.service import Service
from tests.support.paths import ROOT
from tests.support.servers import free_port
from tests.support.waiting import wait_for


class Recorder:
    """Stands in for the hub (``publish``) and the sender (``wake``)."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.events: list[Event] = []
        self.wakes = 0

    def publish(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.events.extend(batch.events)

    def wake(self) -> None:
        self.wakes += 1

    def ids(self) -> list[int]:
        return [e.id for e in self.events]


@contextlib.asynccontextmanager
async def running_relay(
    settings: Settings, recorder: Recorder | None = None, **kwargs: Any
) -> AsyncIterator[tuple[Service, Recorder]]:
    """A started service whose hub and sender are a recorder; stopped on exit."""
    rec = recorder or Recorder()
    relay = Service(settings, hub=rec, sender=rec, **kwargs)
    await relay.start()
    try:
        if relay.listener is not None:
            listener = relay.listener
            await wait_for(
                lambda: listener.connected or relay.failure is not None,
                timeout=10,
                what="listener connected",
            )
        assert relay.failure is None, relay.failure
        yield relay, rec
    finally:
        await asyncio.wait_for(relay.stop(grace=10), timeout=20)


def relay_settings(db_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {"api_token": "test-token", "poll_interval": 30.0}
    return Settings.load(database_url=db_url, **{**values, **changes})


def add_webhook(
    conn: psycopg.Connection[Any], patterns: list[str], *, active: bool = True, name: str = "hook"
) -> int:
    row = conn.execute(
        "INSERT INTO outbox.webhooks (name, url, event_types, secret, is_active) "
        "VALUES (%s, 'http://127.0.0.1:9/', %s, 'whsec_test', %s) RETURNING id",
        (name, patterns, active),
    ).fetchone()
    assert row is not None
    return int(row[0])


def backend_pid(conn: psycopg.Connection[Any], application_name: str) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = "
        "current_database()",
        (application_name,),
    ).fetchone()
    return int(row[0]) if row else None


class TcpProxy:
    """127.0.0.1:port -> Postgres, with a switch that cuts every connection
    and refuses new ones: a network blip or a server outage, as the relay sees it."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def url_for(self, db_url: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(db_url)
        info.update(host="127.0.0.1", port=str(self.port))
        return psycopg.conninfo.make_conninfo(**info)

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        self.refusing = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            t = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)


# --- outbox serve subprocesses --------------------------------------------------


class ServeProcess:
    """``python -m outbox.cli serve`` on a free loopback port, logging to a file."""

    def __init__(
        self, db_url: str, log_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        full_env.update(
            OUTBOX_DATABASE_URL=db_url,
            OUTBOX_API_TOKEN="test-token",
            OUTBOX_POLL_INTERVAL="200ms",
            OUTBOX_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
            PYTHONUNBUFFERED="1",
        )
        full_env.update(env or {})
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "outbox.cli", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def health(self) -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                r = await client.get(self.base_url + "/health")
            return dict(r.json())
        except (httpx.HTTPError, ValueError):
            return None

    async def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            h = await self.health()
            return h if h and h.get("status") == "ok" else None

        return dict(await wait_for(ready, timeout=timeout, interval=0.1, what="serve ready"))

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20) -> int:
        await wait_for(
            lambda: self.proc.poll() is not None, timeout=timeout, interval=0.05, what="serve exit"
        )
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def serve_processes() -> Iterator[list[ServeProcess]]:
    """Collects ServeProcess objects and kills whatever is still running at the end."""
    procs: list[ServeProcess] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def deliveries_summary(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    """(delivery rows, distinct (webhook, event) pairs, events without a delivery)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM outbox.deliveries),"
        " (SELECT count(DISTINCT (webhook_id, event_id)) FROM outbox.deliveries),"
        " (SELECT count(*) FROM outbox.events e WHERE NOT EXISTS"
        "   (SELECT 1 FROM outbox.deliveries d WHERE d.event_id = e.id))"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])
