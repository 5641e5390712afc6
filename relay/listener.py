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

from outbox.relay.reconnect import CONNECTION_ERRORS, Reconnecting
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
        self.backend_pid: int | None = None
        self.connected_since: float | None = None
        self._stopping = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[Any] | None = None
        self.db = Reconnecting(
            url, application_name, what="listener connection", wake=self._stopping, logger=log
        )

    @property
    def state(self) -> str:
        """starting, connected, reconnecting, stopped."""
        return "stopped" if self._stopped else self.db.state

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    @property
    def reconnects(self) -> int:
        return self.db.reconnects

    @property
    def last_error(self) -> str | None:
        return self.db.last_error

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
            self._stopped = True
            await self.db.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = await self.db.connection()
                listen = sql.SQL(query("listen", _SQL))
                for channel in self.channels:
                    await conn.execute(listen.format(channel=sql.Identifier(channel)))
                self.backend_pid = conn.info.backend_pid
                self.connected_since = time.time()
                if self.db.reconnects:
                    log.info("listener reconnected (backend pid %s)", self.backend_pid)
                self.db.ok()
                self.on_connect()
                await self._listen(conn)
            except CONNECTION_ERRORS as exc:
                if self._stopping.is_set():
                    break
                self.connected_since = None
                await self.db.failed(exc)

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
