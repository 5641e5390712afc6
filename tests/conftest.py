"""Shared fixtures: a real PostgreSQL, a fresh database per test.

A migrated template database is built once per test session; each test gets
``CREATE DATABASE ... TEMPLATE`` (fast) and it is dropped afterwards.
Set OUTBOX_TEST_ADMIN_URL to point at another server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from outbox.migrate import migrate

ADMIN_URL = os.environ.get("OUTBOX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _url_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def _drop(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _fresh_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """Create a uniquely named database (from ``template`` if given); drop it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield name
    finally:
        _drop(name)


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    with _fresh_database("outbox_tpl") as name:
        with psycopg.connect(_url_for(name)) as conn:
            migrate(conn)
        yield name


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A brand-new database with no outbox schema."""
    with _fresh_database("outbox_e") as name:
        yield _url_for(name)


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with _fresh_database("outbox_t", template_db) as name:
        yield _url_for(name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
async def aconn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    c = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        yield c
    finally:
        await c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


class RunningServer:
    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"


@contextlib.asynccontextmanager
async def serve_app(
    settings: Any, *, startup_timeout: float = 15.0
) -> AsyncIterator[RunningServer]:
    """Run ``create_app(settings)`` under a real uvicorn on a loopback port."""
    import dataclasses

    import uvicorn

    from outbox.api.app import create_app
    from outbox.api.ws import uvicorn_ws_options

    port = free_port()
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **uvicorn_ws_options(settings),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn-test")
    try:
        await wait_for(
            lambda: server.started or task.done(), timeout=startup_timeout, what="uvicorn startup"
        )
        if task.done():
            task.result()
            raise AssertionError("uvicorn exited during startup")
        yield RunningServer(app, port)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=15)
        except TimeoutError:
            task.cancel()


@pytest.fixture
def settings(db_url: str) -> Any:
    """Settings for a test server on this test's database (fast polls, short timeouts)."""
    from outbox.relay.config import Settings

    return Settings(
        database_url=db_url,
        api_token="test-token",
        poll_interval=0.5,
        webhook_timeout=5.0,
        webhook_allow_networks=_loopback_nets(),
    )


def _loopback_nets() -> tuple[Any, ...]:
    import ipaddress

    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
