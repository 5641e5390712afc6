"""The relay's side of the NOTIFY doorbell (sql/003_doorbell.sql).

Writers NOTIFY only while some relay holds or waits for the doorbell lock
exclusively; otherwise they take it shared until they commit. So a relay may
only stop reading ("fall asleep") after it holds the lock — which waits for
every writer in flight — and has read once more. While it holds the lock,
every commit rings. On waking it releases the lock and reads; under load it
keeps reading on a short adaptive poll and holds nothing, so writers pay no
NOTIFY at all.

The lock lives on its own session connection: LISTEN needs an idle
connection, and a blocked lock request must not stop notifications from
arriving. If this connection is lost, the lock goes with it: writers stop
ringing and the relay's poll timer carries on — latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from outbox.names import DOORBELL_KEY
from outbox.sqlfiles import query

log = logging.getLogger("outbox.relay.doorbell")
_SQL = "doorbell.sql"


class Doorbell:
    def __init__(self, url: str, *, application_name: str = "outbox doorbell") -> None:
        self.url = url
        self.application_name = application_name
        self.held = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # Giving the lock up (a cancelled request, an unlock) runs in the
        # background: the relay reads at once instead of waiting for it.
        # Every later use of the connection waits for it first.
        self._settling: asyncio.Task[None] | None = None

    async def _settle(self) -> None:
        task, self._settling = self._settling, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                application_name=self.application_name,
                connect_timeout=5,
            )
        return self._conn

    async def fall_asleep(self, interrupt: asyncio.Event, max_wait: float) -> str:
        """Take the doorbell lock exclusively; waits for writers in flight.

        Returns ``"held"`` once held; ``"interrupted"`` if ``interrupt`` was
        set first (a notification arrived: go and read); ``"timeout"`` if
        ``max_wait`` passed (a writer has been open that long: read, then try
        again); ``"failed"`` if the connection failed.
        """
        if self.held:
            return "held"
        await self._settle()
        try:
            conn = await self._connection()
        except psycopg.OperationalError as exc:
            log.warning("doorbell connection failed: %s", str(exc).strip().splitlines()[0])
            return "failed"
        lock = asyncio.create_task(
            conn.execute(query("doorbell_lock", _SQL), {"key": DOORBELL_KEY}),
            name="doorbell-lock",
        )
        woken = asyncio.create_task(interrupt.wait(), name="doorbell-interrupt")
        try:
            done, _ = await asyncio.wait(
                {lock, woken}, timeout=max_wait, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
        if lock in done:
            try:
                lock.result()
            except psycopg.Error as exc:
                log.warning("doorbell lock failed: %s", exc)
                await self._drop()
                return "failed"
            self.held = True
            return "held"
        # Interrupted or timed out: give the request up in the background.
        # Cancelling it sends a cancel request to the server, which costs a
        # new connection to the postmaster (3 ms median here, more under
        # load): waiting for it would add that to the wake-up of the commit
        # that rang. Until it is done, writers may still ring: harmless.
        self._settling = asyncio.create_task(self._give_up(conn, lock), name="doorbell-give-up")
        return "interrupted" if interrupt.is_set() else "timeout"

    async def _give_up(self, conn: psycopg.AsyncConnection[Any], lock: asyncio.Task[Any]) -> None:
        """Cancel a lock request; if the grant won that race, release it."""
        lock.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await lock
        # Granted or not, this connection holds nothing else: unlock_all.
        await self._unlock(conn)

    async def _unlock(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            # unlock_all (sql/doorbell.sql says why).
            await conn.execute(query("doorbell_unlock", _SQL))
        except psycopg.Error as exc:
            # Losing the connection releases the lock as well.
            log.warning("doorbell unlock failed (%s); dropping the connection", exc)
            await self._drop()

    async def wake(self) -> None:
        """Release the lock (in the background): from now on writers in flight hold the relay off.

        The relay reads at once; writers that commit before the unlock is
        through still ring, which only costs them the NOTIFY.
        """
        if not self.held:
            return
        self.held = False
        await self._settle()
        if self._conn is None or self._conn.closed:
            return  # a lost connection released the lock
        self._settling = asyncio.create_task(self._unlock(self._conn), name="doorbell-unlock")

    async def _drop(self) -> None:
        # Not _settle(): _drop may run inside the settling task itself.
        self.held = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None

    async def close(self) -> None:
        await self._settle()
        await self._drop()
