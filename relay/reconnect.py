"""Staying connected: the relay's dedicated connections and their backoff.

The listener, the feed reader, the leader and the delivery worker's claimer
and recorder each own one connection outside the API pool: LISTEN and
session advisory locks are per session, and a pooled connection may be
handed to someone else or reset. Each loop keeps its connection with one
helper, :class:`Reconnecting` (connect when needed, back off with
:func:`backoff` after a failure, start over after a success), so there is
one reconnect loop, not one per part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import psycopg

from outbox.sqlfiles import query

log = logging.getLogger("outbox.relay.reconnect")

# Detect a silently dead peer (a network blip, a frozen host) in about
# KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds instead of the
# operating system's default of two hours. The client side covers our reads;
# the same values are SET on the server side so that the server drops a lost
# leader's session, and with it the advisory lock, just as quickly.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3


def backoff(attempt: int, *, base: float = 0.05, cap: float = 5.0) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based).

    ``min(cap, base * 2**attempt)`` with "full jitter" (uniform in
    [delay/2, delay]) so that several relays that lost the server together do
    not knock on it in lockstep. The first retry comes after 25-50 ms: a
    terminated backend costs milliseconds, a restart a few seconds.
    """
    delay = min(cap, base * 2.0 ** min(attempt, 32))
    return delay / 2 + random.random() * delay / 2


async def nap(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``event`` is set (a wake-up or a stop)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass


def describe(exc: BaseException) -> str:
    """The first line of an error, for logs and /health."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def connect(url: str, application_name: str) -> psycopg.AsyncConnection[Any]:
    """Open a dedicated autocommit connection: keepalives on both ends, no JIT."""
    conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        connect_timeout=5,
        application_name=application_name[:63],
        keepalives=1,
        keepalives_idle=KEEPALIVE_IDLE,
        keepalives_interval=KEEPALIVE_INTERVAL,
        keepalives_count=KEEPALIVE_COUNT,
    )
    await conn.execute(
        query("relay_session", "reconnect.sql"),
        {
            "idle": str(KEEPALIVE_IDLE),
            "interval": str(KEEPALIVE_INTERVAL),
            "count": str(KEEPALIVE_COUNT),
        },
    )
    return conn


async def configure_api_session(conn: psycopg.AsyncConnection[Any]) -> None:
    """A new connection of the API's pool: no JIT (sql/reconnect.sql ``api_session``)."""
    await conn.execute(query("api_session", "reconnect.sql"))


async def close_quietly(conn: psycopg.AsyncConnection[Any] | None) -> None:
    """Close a connection that may already be broken."""
    if conn is None or conn.closed:
        return
    with contextlib.suppress(psycopg.Error):
        await conn.close()


# What a lost or unreachable server looks like to psycopg: the connection
# failed (OperationalError covers "server closed the connection", admin
# shutdown, "the database system is starting up") or was already closed
# (InterfaceError).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)


class Reconnecting:
    """One dedicated connection that comes back: the reconnect loop of every
    part that holds a connection (the feed loop, the listener, the leader,
    the delivery worker's claimer and recorder).

    A loop asks for its connection (:meth:`connection`: the open one, or a
    new one), says when a round worked (:meth:`ok`: the backoff starts over),
    and hands what went wrong to :meth:`failed`, which closes the connection
    (unless told to keep it), records and logs one line, and waits the
    :func:`backoff` — less when ``wake`` is set (a stop, or new work).
    ``state``, ``last_error`` and ``reconnects`` are what ``/health`` shows.
    """

    def __init__(
        self,
        url: str,
        application_name: str,
        *,
        what: str,
        wake: asyncio.Event | None = None,
        base: float = 0.05,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = url
        self.application_name = application_name
        self.what = what
        self.wake = wake
        self.base = base
        self.log = logger or log
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.state = "starting"  # connected, reconnecting, closed
        self.last_error: str | None = None
        self.failures = 0  # in a row, since the last ok()
        self.reconnects = 0  # failures in all

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The open connection, or a new one (raises what connecting raises)."""
        if self.conn is None or self.conn.closed:
            self.conn = await connect(self.url, self.application_name)
        return self.conn

    def ok(self) -> None:
        """A round worked: the next failure waits the shortest backoff again."""
        self.state, self.last_error, self.failures = "connected", None, 0

    async def failed(self, exc: BaseException, *, close: bool = True) -> None:
        """Record ``exc``, log it, close the connection (unless ``close`` is
        false: the connection is fine, the statement was refused), and wait
        the backoff or until ``wake`` is set."""
        if close:
            await self.close()
        self.state = "reconnecting"
        self.last_error = describe(exc)
        self.reconnects += 1
        delay = backoff(self.failures, base=self.base)
        self.failures += 1
        self.log.warning("%s failed (%s); retrying in %.2fs", self.what, self.last_error, delay)
        if self.wake is None:
            await asyncio.sleep(delay)
        else:
            await nap(self.wake, delay)

    async def close(self) -> None:
        """Close the connection, quietly if it is already broken."""
        conn, self.conn = self.conn, None
        await close_quietly(conn)
