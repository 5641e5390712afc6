"""The wake-up: LISTEN on a dedicated autocommit connection.

A notification is a doorbell, never data: on ``outbox_events`` the feed
reader and the dispatcher re-read the table; on ``outbox_deliveries`` the
webhook sender looks for due work. Notifications can be lost (the connection
drops, or NOTIFY was never sent because a writer inserted rows directly), so
every consumer also polls; a lost doorbell costs latency, never an event.

After a lost connection the listener reconnects with backoff, LISTENs again
*first*, and only then reports ``on_connect``: everything committed before
the new LISTEN is found by the catch-up read that ``on_connect`` triggers,
everything after it rings the bell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from outbox.relay.reconnect import CONNECTION_ERRORS, backoff, close_quietly, connect, describe, nap
from outbox.sqlfiles import query

log = logging.getLogger("outbox.relay.listener")
_SQL = "listener.sql"

# How often an otherwise silent listener proves its connection is alive. A
# dead server is usually noticed at once (the socket closes); this catches a
# connection that hangs without closing, together with TCP keepalives.
PING_INTERVAL = 10.0
PING_TIMEOUT = 5.0


class Listener:
    """LISTEN on ``channels``; call ``on_notify(channel)`` for each notification.

    ``on_connect()`` runs after every successful (re)LISTEN, so the owner can
    catch up on whatever was committed while nobody listened.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        *,
        on_notify: Callable[[str], None],
        on_connect: Callable[[], None],
        application_name: str = "outbox listener",
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.url = url
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.application_name = application_name
        self.ping_interval = ping_interval
        self.state = "starting"
        self.backend_pid: int | None = None
        self.connected_since: float | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    async def run(self) -> None:
        self._task = asyncio.current_task()
        try:
            await self._run()
        except asyncio.CancelledError:
            # stop() cancels a listener that is waiting for notifications:
            # there is nothing to finish, and waiting out the ping interval
            # would only delay shutdown.
            if not self._stopping.is_set():
                raise
        finally:
            self.state = "stopped"

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await connect(self.url, self.application_name)
                listen = sql.SQL(query("listen", _SQL))
                for channel in self.channels:
                    await conn.execute(listen.format(channel=sql.Identifier(channel)))
                self.backend_pid = conn.info.backend_pid
                self.state = "connected"
                self.connected_since = time.time()
                if attempt or self.reconnects:
                    log.info("listener reconnected (backend pid %s)", self.backend_pid)
                attempt = 0
                self.on_connect()
                await self._listen(conn)
            except CONNECTION_ERRORS as exc:
                if self._stopping.is_set():
                    break
                self.state = "reconnecting"
                self.connected_since = None
                self.last_error = describe(exc)
                self.reconnects += 1
                delay = backoff(attempt)
                attempt += 1
                log.warning(
                    "listener connection lost (%s); reconnecting in %.2fs", self.last_error, delay
                )
                await nap(self._stopping, delay)
            finally:
                await close_quietly(conn)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while not self._stopping.is_set():
            # notifies() returns when the timeout passes without a
            # notification (or on stop); either way we loop to ping/check.
            async for note in conn.notifies(timeout=self.ping_interval):
                self.on_notify(note.channel)
                if self._stopping.is_set():
                    return
            if self._stopping.is_set():
                return
            async with asyncio.timeout(PING_TIMEOUT):
                await conn.execute(query("ping", _SQL))

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
