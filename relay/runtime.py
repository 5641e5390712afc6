"""The feed loop: every process reads the feed for its own WebSocket clients.

It starts at the head of the feed (:meth:`FeedLoop.start`, before the app
serves, so ``cursor`` is known) and hands each batch to the hub, in commit
order, never skipping an event that commits late (relay/feed.py says how).
Between reads it polls briefly while events flow, else sleeps on the doorbell
(relay/doorbell.py) or the poll timer; a NOTIFY (the listener) wakes it.

One read per process: once the leader's dispatcher has caught up it joins
the feed loop (one read from the meet of both cursors, see
relay/dispatcher.py) and takes its batches instead of reading.

It runs on its own dedicated connection and survives a lost server by itself
(relay/reconnect.py), catching up from its cursor. The service
(relay/service.py) builds it and wires its wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Protocol

import psycopg
from pydantic import BaseModel

from outbox.cursor import Cursor, meet, passed
from outbox.relay.cadence import Cadence
from outbox.relay.config import FeedSettings
from outbox.relay.dispatcher import Dispatcher
from outbox.relay.doorbell import Doorbell
from outbox.relay.feed import Batch, Lag, head, measure_lag, read_batch
from outbox.relay.metrics import Metrics
from outbox.relay.progress import Progress
from outbox.relay.reconnect import CONNECTION_ERRORS, Reconnecting, describe, nap

log = logging.getLogger("outbox.relay")

# How often the feed loop measures its lag (events committed and not read).
LAG_INTERVAL = 5.0
# While events keep coming, the feed loop re-reads on its cadence
# (relay/cadence.py: when a batch is likely, within a 2 ms latency budget)
# instead of sleeping on the doorbell: writers then pay no NOTIFY (see
# relay/doorbell.py). It falls asleep only after the feed has been quiet for
# QUIET_BEFORE_SLEEP.
QUIET_BEFORE_SLEEP = 0.1
# Unless events only trickle in: when the last TRICKLE_READS reads that
# found events were on average more than TRICKLE_GAP apart (under ~50 such
# reads a second), the loop falls asleep right after a read with events
# (and the one more read that falling asleep takes). Polling between such
# events was most of an idle relay's CPU (issue 22), and a NOTIFY per commit
# at that rate costs writers nothing measurable. A relay that has seen fewer
# such reads (one just started, or woken after a rest) keeps the window.
TRICKLE_READS = 8
TRICKLE_GAP = 0.02
# Falling asleep waits for writers in flight. A writer that stays open (its
# events written, its commit far off) must not hold back others that
# committed meanwhile without ringing (they took the shared lock before we
# queued): give up the wait this often, read, and try again.
MAX_SLEEP_WAIT = 0.05


def same_reach(a: Cursor, b: Cursor) -> bool:
    """Whether reading from ``a`` is reading from ``b``: both have passed the same events.

    Held for ``meet(b, other)`` when ``other`` had passed all ``b`` had: the
    meet lists ``other``'s pending xids too, but one at or above ``b``'s
    xmax is named by that xmax already, with nothing of it passed.
    """
    if a.after != b.after or a.xmax != b.xmax:
        return False
    b_listed = set(b.pending)
    a_pos, b_pos = dict(a.done), dict(b.done)
    if any(x < b.xmax and x not in b_listed for x in a.pending):
        return False  # ``b`` passed this transaction whole, ``a`` did not
    if any(x not in b_listed and k for x, k in a_pos.items()):
        return False
    a_listed = set(a.pending)
    return all(x in a_listed and a_pos.get(x, 0) == b_pos.get(x, 0) for x in b.pending)


class BatchSink(Protocol):
    """The WebSocket hub as the feed loop sees it (relay/hub.py)."""

    def publish(self, batch: Batch) -> None: ...


class FeedStatus(BaseModel):
    """The feed loop, for ``/health``."""

    state: str  # starting, ok, reconnecting
    error: str | None
    cursor: str | None
    last_read_at: float | None
    lag: dict[str, Any] | None
    progress: dict[str, Any]


class FeedLoop:
    """Read the feed from the head and hand each batch to ``hub``; see the module docstring."""

    def __init__(
        self,
        url: str,
        settings: FeedSettings,
        metrics: Metrics,
        *,
        hub: BatchSink,
        dispatcher: Dispatcher,
        instance: str,
    ) -> None:
        self.url = url
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.dispatcher = dispatcher
        self.instance = instance
        self.reads = 0
        # The end of the last batch handed to the hub; None until start().
        self.cursor: Cursor | None = None
        self.last_read_at: float | None = None
        self.progress = Progress()
        self.lag: Lag | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.db = Reconnecting(
            url, f"outbox feed {instance}", what="feed read", wake=self._stopping, logger=log
        )
        self._last_busy = 0.0
        # When the last reads that found events were (for the trickle rule).
        self._busy_reads: deque[float] = deque(maxlen=TRICKLE_READS)
        # The start of empty batches not handed to the dispatcher (_offer).
        self._unoffered: Cursor | None = None
        self.cadence = Cadence(settings.batch_size)
        self.doorbell: Doorbell | None = (
            Doorbell(url, application_name=f"outbox doorbell {instance}")
            if settings.notify
            else None
        )
        metrics.gauge(
            "outbox_feed_lag_events",
            "Events committed and not yet read by this relay's feed",
            lambda: float(self.lag.events if self.lag else 0),
        )
        metrics.gauge(
            "outbox_feed_lag_seconds",
            "Age of the oldest event not yet read by this relay's feed",
            lambda: self.lag.oldest_seconds if self.lag else 0.0,
        )
        metrics.gauge(
            "outbox_feed_seconds_since_progress",
            "Seconds since this relay's feed reader last read successfully",
            self.progress.since_ok,
        )

    @property
    def application_name(self) -> str:
        return self.db.application_name

    @property
    def state(self) -> str:
        """starting, ok, reconnecting."""
        return {"connected": "ok", "closed": "ok"}.get(self.db.state, self.db.state)

    @property
    def error(self) -> str | None:
        return self.db.last_error

    def wake(self) -> None:
        """New events may have committed (a NOTIFY, or a reconnected listener)."""
        self._wake.set()

    async def start(self) -> None:
        """Connect and read the head of the feed, so that ``cursor`` is set.

        Raises if the database is unreachable.
        """
        if self.cursor is not None:
            return
        self.cursor = await head(await self.db.connection())
        self.db.ok()
        log.info(
            "relay %s starts at the head of the feed (after id %s)",
            self.instance,
            self.cursor.after,
        )

    async def stop(self) -> None:
        """Finish the current batch; run() then returns."""
        self._stopping.set()
        self._wake.set()

    async def close(self) -> None:
        """Close the feed's connection and the doorbell's (after run() ended)."""
        await self.db.close()
        if self.doorbell is not None:
            await self.doorbell.close()

    async def run(self) -> None:
        await self.start()
        try:
            await self._loop()
        finally:
            await self.close()

    async def _loop(self) -> None:
        lag_due = 0.0
        while not self._stopping.is_set():
            try:
                conn = await self.db.connection()
                self._wake.clear()
                assert self.cursor is not None
                self.progress.start("feed read")
                started = time.monotonic()
                batch = await self._read(conn, self.cursor)
                self.cadence.observe(started, len(batch.events))
                self.progress.ok()
                # No await between these two lines: /ws takes the cursor as
                # the seam between a client's catch-up read and the hub.
                self.cursor = batch.end
                if batch.events:
                    self.hub.publish(batch)
                    self.metrics.events_read.inc(len(batch.events))
                    # The leader's dispatcher follows this loop: under load no
                    # writer rings, so the bell cannot be what wakes it.
                    self.dispatcher.wake()
                self.last_read_at = time.time()
                self.db.ok()
                if batch.more:
                    continue
                if time.monotonic() >= lag_due:
                    self.lag = await measure_lag(conn, self.cursor)
                    lag_due = time.monotonic() + LAG_INTERVAL
                await self._rest(bool(batch.events))
            except CONNECTION_ERRORS as exc:
                if self._stopping.is_set():
                    await self.db.close()
                    return
                self.progress.failed(describe(exc))
                await self.db.failed(exc)

    async def _read(self, conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> Batch:
        """The next batch after ``cursor``; when the dispatcher asks to join,
        one read from the meet of both cursors serves both."""
        self.reads += 1
        wants = self.dispatcher.join_from
        if wants is None:
            batch = await read_batch(conn, cursor, self.settings.batch_size)
            self._offer(batch)
            return batch
        self._unoffered = None
        start = meet(cursor, wants)
        try:
            both = await read_batch(conn, start, self.settings.batch_size)
        except BaseException:
            self.dispatcher.join_failed()
            raise
        if both.more or self.dispatcher.join_from != wants:
            # Not a complete read: its end need not cover what either has passed.
            self.dispatcher.join_failed()
            if same_reach(start, cursor):
                # The dispatcher had passed all this loop had: the read is
                # this loop's own next batch (a relay behind under load read
                # every such page twice, issue 22).
                return Batch(both.events, cursor, both.end, both.more)
            self.reads += 1
            return await read_batch(conn, cursor, self.settings.batch_size)  # not joined
        # Not full: its end has passed everything either had passed, and
        # each side gets the events it had not.
        self.dispatcher.join(
            Batch([e for e in both.events if not passed(wants, e.id, e.xid)], wants, both.end)
        )
        return Batch([e for e in both.events if not passed(cursor, e.id, e.xid)], cursor, both.end)

    def _offer(self, batch: Batch) -> None:
        """Hand a batch to a joined dispatcher; empty ones only extend the next.

        An empty batch moves no cursor that anyone stores, so waking the
        dispatcher for it is wasted work (it was most of an idle relay's
        dispatcher CPU: the loop reads every few ms while events trickle in).
        Its start is kept instead, and the next batch with events is offered
        from there: the reads in between found nothing, so the chain of
        cursors the dispatcher follows stays unbroken.
        """
        if not self.dispatcher.joined:
            self._unoffered = None
            return
        start = self._unoffered or batch.start
        if not batch.events:
            self._unoffered = start
            return
        self._unoffered = None
        if start is not batch.start:
            batch = Batch(batch.events, start, batch.end, batch.more)
        self.dispatcher.offer(batch)

    async def _rest(self, busy: bool) -> None:
        """Between reads: poll briefly while events flow (or did within
        QUIET_BEFORE_SLEEP), else fall asleep on the doorbell.

        Asleep = holding the doorbell lock, taken only after every writer in
        flight has committed, and after one more (empty) read: from then on
        every commit rings. On waking, the lock is released before reading.
        """
        bell = self.doorbell
        if bell is None:
            await nap(self._wake, self.settings.poll_interval)
            return
        now = time.monotonic()
        if busy:
            self._last_busy = now
            self._busy_reads.append(now)
        if now - self._last_busy < self._quiet_before_sleep():
            await bell.wake()
            await nap(self._wake, self.cadence.delay(time.monotonic()))
            return
        if bell.held:
            # The read after taking the lock found nothing: sleep until rung.
            await nap(self._wake, self.settings.poll_interval)
            await bell.wake()
            return
        outcome = await bell.fall_asleep(
            self._wake, min(self.settings.poll_interval, MAX_SLEEP_WAIT)
        )
        if outcome == "failed":
            # No doorbell connection: plain polling (the listener still
            # hears any bell that does ring).
            await nap(self._wake, self.settings.poll_interval)
        # "held": read once more before sleeping; "interrupted"/"timeout": read.

    def _quiet_before_sleep(self) -> float:
        """How long the feed must be quiet before the loop falls asleep."""
        reads = self._busy_reads
        if len(reads) == reads.maxlen and reads[-1] - reads[0] > TRICKLE_GAP * (len(reads) - 1):
            return 0.0  # a trickle: sleep now, the next commit rings
        return QUIET_BEFORE_SLEEP

    def status(self) -> FeedStatus:
        return FeedStatus(
            state=self.state,
            error=self.error,
            cursor=self.cursor.encode() if self.cursor else None,
            last_read_at=self.last_read_at,
            lag=self.lag.as_dict() if self.lag else None,
            progress=self.progress.as_dict(),
        )
