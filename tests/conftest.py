"""Shared fixtures: a real PostgreSQL, a fresh database per test.

A migrated template database is built once per test session; each test gets
``CREATE DATABASE ... TEMPLATE`` (fast) and it is dropped afterwards.
Set OUTBOX_TEST_ADMIN_URL to point at another server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from outbox.migrate import migrate

ADMIN_URL = os.environ.get(
    "OUTBOX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _url_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def _drop(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"outbox_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(_url_for(name)) as conn:
            migrate(conn)
        yield name
    finally:
        _drop(name)


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A brand-new database with no outbox schema."""
    name = f"outbox_e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url_for(name)
    finally:
        _drop(name)


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = f"outbox_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield _url_for(name)
    finally:
        _drop(name)


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
