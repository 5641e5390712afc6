"""Leader election: a session advisory lock on a dedicated connection.

Several ``outbox serve`` processes may share one database; exactly one of
them, the leader, creates delivery rows and applies retention. The leader is
whoever holds the session-level advisory lock :data:`outbox.names.LEADER_KEY`.

The leader's work runs *on the lock's own session*: if that session dies
(process killed, ``pg_terminate_backend``, network loss) the server releases
the lock and the leader's next statement fails, so it cannot keep working
without the lock for longer than one statement. Followers retry the lock
every ``retry_interval`` seconds, so a dead leader is replaced within about
that long (a killed process closes its socket at once; a vanished host is
noticed by the server-side TCP keepalives of relay/reconnect.py).

Two leaders can still overlap for one statement (the old one's last commit
races the new one's first); the dispatcher's compare-and-set on its stored
cursor and the unique (webhook, event) key make that harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import scalar_row

from outbox.errors import LostLeadership
from outbox.names import LEADER_KEY
from outbox.relay.progress import Terms
from outbox.relay.reconnect import CONNECTION_ERRORS, Reconnecting, describe, nap
from outbox.sqlfiles import query

log = logging.getLogger("outbox.relay.leader")

LeaderWork = Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]


# What ends a term without ending the relay: a lost session or a usurper.
_STEP_DOWN: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, LostLeadership)


class Leadership:
    """Campaign for the lock; while it is held, run ``work(conn)`` on its session.

    ``work`` returns when the relay stops, or raises when the session is lost
    (a connection error) or another leader is detected
    (:class:`LostLeadership`); the lock is then released by closing the
    session, and the campaign starts again.
    """

    def __init__(
        self,
        url: str,
        work: LeaderWork,
        *,
        application_name: str = "outbox leader",
        retry_interval: float = 1.0,
        key: int = LEADER_KEY,
    ) -> None:
        self.url = url
        self.work = work
        self.application_name = application_name
        self.retry_interval = retry_interval
        self.key = key
        self.is_leader = False
        self.leader_since: float | None = None
        self.terms = 0
        self.recent_terms = Terms()
        self.last_error: str | None = None
        self._stopping = asyncio.Event()

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "follower"

    async def run(self) -> None:
        # Each term and each campaign on a fresh session: closing it is what
        # releases the lock.
        db = Reconnecting(
            self.url,
            self.application_name,
            what="leader election",
            wake=self._stopping,
            base=0.2,
            logger=log,
        )
        while not self._stopping.is_set():
            try:
                conn = await db.connection()
                db.ok()
                if not await self._campaign(conn):
                    return
                self.is_leader = True
                self.leader_since = time.time()
                self.terms += 1
                self.recent_terms.began()
                log.info("this relay is now the leader")
                await self.work(conn)
                return  # the work returns only when the relay stops
            except _STEP_DOWN as exc:
                self._step_down()
                if self._stopping.is_set():
                    return
                self.last_error = describe(exc)
                await db.failed(exc)  # closes the session first: the lock goes with it
            finally:
                self._step_down()
                await db.close()

    async def _campaign(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Wait until the lock is ours (True) or the relay stops (False)."""
        cur = conn.cursor(row_factory=scalar_row)
        while not self._stopping.is_set():
            await cur.execute(query("leader_try_lock", "leader.sql"), {"key": self.key})
            if await cur.fetchone():
                return True
            await nap(self._stopping, self.retry_interval)
        return False

    def _step_down(self) -> None:
        if self.is_leader:
            log.info("this relay is no longer the leader")
        self.is_leader = False
        self.leader_since = None

    async def stop(self) -> None:
        """Stop campaigning; the work function is stopped by its owner."""
        self._stopping.set()
