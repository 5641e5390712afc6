"""Database fixtures (a pytest plugin): a real PostgreSQL, a fresh database per test.

A migrated template database is built once per test session; each test gets
``CREATE DATABASE ... TEMPLATE`` (fast) and it is dropped afterwards.
Set OUTBOX_TEST_ADMIN_URL to point at another server.

Registered from the root ``tests/conftest.py``. Every fixture here that
touches the server depends on ``template_db`` or is ``empty_db_url`` (see
:data:`DB_FIXTURES`); the tier plugin (``tests/support/tiers.py``) refuses a
unit-tier test that asks for any of them, directly or through another fixture.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from outbox.migrate import migrate

ADMIN_URL = os.environ.get("OUTBOX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# The fixtures that reach the server. Any fixture built on one of them (db_url,
# conn, aconn, settings, ...) has it in its closure, so these two names are
# enough to recognise every database test.
DB_FIXTURES = frozenset({"template_db", "empty_db_url"})


def url_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def drop(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """Create a uniquely named database (from ``template`` if given); drop it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield name
    finally:
        drop(name)


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    with fresh_database("outbox_tpl") as name:
        with psycopg.connect(url_for(name)) as conn:
            migrate(conn)
        yield name


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A brand-new database with no outbox schema."""
    with fresh_database("outbox_e") as name:
        yield url_for(name)


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with fresh_database("outbox_t", template_db) as name:
        yield url_for(name)


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
