"""The relay runtime: the long-running part of ``outbox serve``.

    NOTIFY outbox_events ─► Listener ─┬─► feed loop ──► hub.publish(batch)   (every process)
              (or the poll timer)     └─► Dispatcher ─► delivery rows ──► sender.wake()
                                             ▲              (leader only, see relay/leader.py)
    NOTIFY outbox_deliveries ─► sender.wake()│
                                        Retention (leader only)

Every process reads the feed for its own WebSocket clients, starting at the
head of the feed (``relay.cursor`` is known before the app serves). Exactly
one process, the leader, also runs the dispatcher (from its stored cursor)
and retention. One read per process: once the dispatcher has caught up it
joins the feed loop (one read from the meet of both cursors, see
relay/dispatcher.py) and takes its batches instead of reading.

Each loop runs on its own dedicated connection and survives a lost server by
itself: reconnect with backoff, then catch up from where it was. A failure
that is not a lost connection (a bug, a missing schema) ends the relay, and
the composition root stops the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any, Protocol

import psycopg

from outbox.cursor import Cursor, meet, passed
from outbox.names import DELIVERIES_CHANNEL, EVENTS_CHANNEL
from outbox.relay.capture_check import CAPTURE_CHECK_INTERVAL, CaptureCheck
from outbox.relay.config import RelaySettings
from outbox.relay.dispatcher import Dispatcher, Waker
from outbox.relay.doorbell import Doorbell
from outbox.relay.feed import Batch, Lag, head, measure_lag, read_batch
from outbox.relay.leader import Leadership
from outbox.relay.listener import Listener
from outbox.relay.metrics import Metrics
from outbox.relay.progress import Progress
from outbox.relay.reconnect import (
    CONNECTION_ERRORS,
    backoff,
    close_quietly,
    connect,
    describe,
    nap,
)
from outbox.relay.retention import RETENTION_INTERVAL, retention_round

log = logging.getLogger("outbox.relay")

# How often the feed loop measures its lag (events committed and not read).
LAG_INTERVAL = 5.0
# While events keep coming, the feed loop re-reads after BUSY_POLL instead of
# sleeping on the doorbell: writers then pay no NOTIFY (see
# relay/doorbell.py), and a busy feed is at most this much late. It falls
# asleep only after the feed has been quiet for QUIET_BEFORE_SLEEP.
BUSY_POLL = 0.001
QUIET_BEFORE_SLEEP = 0.1
# Falling asleep waits for writers in flight. A writer that stays open (its
# events written, its commit far off) must not hold back others that
# committed meanwhile without ringing (they took the shared lock before we
# queued): give up the wait this often, read, and try again.
MAX_SLEEP_WAIT = 0.05


class BatchSink(Protocol):
    """The WebSocket hub as the relay sees it (relay/hub.py)."""

    def publish(self, batch: Batch) -> None: ...


class Relay:
    """Feed loop + listener + leader (dispatcher, retention); see the module docstring."""

    def __init__(
        self,
        settings: RelaySettings,
        metrics: Metrics,
        *,
        hub: BatchSink,
        sender: Waker,
        leader_retry_interval: float = 1.0,
        retention_interval: float = RETENTION_INTERVAL,
        capture_check_interval: float = CAPTURE_CHECK_INTERVAL,
    ) -> None:
        self.settings = settings
        self.url = settings.database.url
        self.feed = settings.feed
        self.metrics = metrics
        self.hub = hub
        self.sender = sender
        self.retention_interval = retention_interval
        # The end of the last batch handed to the hub; None until start().
        self.cursor: Cursor | None = None
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # No silent stop: every capture rule's trigger checked (issue 21).
        self.capture_check = CaptureCheck(
            settings.database.url, metrics, instance=self.instance, interval=capture_check_interval
        )
        self.feed_state = "starting"
        self.feed_error: str | None = None
        self.last_read_at: float | None = None
        self.feed_progress = Progress()
        self.lag: Lag | None = None
        self._feed_conn: psycopg.AsyncConnection[Any] | None = None
        self._feed_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_busy = 0.0
        self.doorbell: Doorbell | None = (
            Doorbell(settings.database.url, application_name=f"outbox doorbell {self.instance}")
            if settings.feed.notify
            else None
        )
        self.dispatcher = Dispatcher(
            metrics,
            sender,
            poll_interval=settings.feed.poll_interval,
            batch_size=settings.feed.batch_size,
        )
        self.dispatcher.on_join_request = self._feed_wake.set
        self.feed_reads = 0
        self.leadership = Leadership(
            settings.database.url,
            self.dispatcher.run,
            application_name=f"outbox leader {self.instance}",
            retry_interval=leader_retry_interval,
        )
        channels = [EVENTS_CHANNEL, DELIVERIES_CHANNEL] if settings.feed.notify else []
        self.listener: Listener | None = (
            Listener(
                settings.database.url,
                channels,
                on_notify=self._on_notify,
                on_connect=self._on_listen,
                application_name=f"outbox listener {self.instance}",
            )
            if channels
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
            "outbox_relay_leader",
            "1 if this relay is the leader (dispatches deliveries, applies retention)",
            lambda: float(self.leadership.is_leader),
        )
        metrics.gauge(
            "outbox_feed_seconds_since_progress",
            "Seconds since this relay's feed reader last read successfully",
            self.feed_progress.since_ok,
        )
        metrics.gauge(
            "outbox_dispatcher_seconds_since_progress",
            "Seconds since the dispatcher last moved forward (leader only; 0 on followers)",
            lambda: self.dispatcher.progress.since_ok() if self.leadership.is_leader else 0.0,
        )
        metrics.gauge(
            "outbox_listener_connected",
            "1 while the LISTEN connection is up",
            lambda: float(self.listener is not None and self.listener.connected),
        )

    # --- wake-ups ------------------------------------------------------------

    def _on_notify(self, channel: str) -> None:
        if channel == EVENTS_CHANNEL:
            self._feed_wake.set()
            self.dispatcher.wake()
        elif channel == DELIVERIES_CHANNEL:
            self.sender.wake()

    def _on_listen(self) -> None:
        # (Re)LISTENing: whatever committed while nobody listened is found by
        # an immediate read.
        self._feed_wake.set()
        self.dispatcher.wake()
        self.sender.wake()

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect the feed and read the head of the feed, so that ``cursor`` is set.

        Called before the app serves; raises if the database is unreachable.
        """
        if self.cursor is not None:
            return
        self._feed_conn = await connect(self.url, f"outbox feed {self.instance}")
        self.cursor = await head(self._feed_conn)
        self.feed_state = "ok"
        log.info(
            "relay %s starts at the head of the feed (after id %s)",
            self.instance,
            self.cursor.after,
        )

    async def run(self) -> None:
        await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._feed_loop(), name="relay-feed")
                tg.create_task(self.leadership.run(), name="relay-leader")
                tg.create_task(self._retention_loop(), name="relay-retention")
                tg.create_task(self.capture_check.run(), name="relay-capture-check")
                if self.listener is not None:
                    tg.create_task(self.listener.run(), name="relay-listener")
        finally:
            await close_quietly(self._feed_conn)
            self._feed_conn = None
            if self.doorbell is not None:
                await self.doorbell.close()
            log.info("relay %s stopped", self.instance)

    async def stop(self) -> None:
        """Finish the current batches, then close every connection.

        The dispatcher's cursor is stored with each batch it dispatches, so
        there is nothing else to save. run() returns once everything is closed.
        """
        self._stopping.set()
        self._feed_wake.set()
        await self.dispatcher.stop()
        await self.leadership.stop()
        await self.capture_check.stop()
        if self.listener is not None:
            await self.listener.stop()

    # --- the feed loop -------------------------------------------------------

    async def _feed_loop(self) -> None:
        attempt = 0
        lag_due = 0.0
        while not self._stopping.is_set():
            try:
                if self._feed_conn is None or self._feed_conn.closed:
                    self._feed_conn = await connect(self.url, f"outbox feed {self.instance}")
                conn = self._feed_conn
                self._feed_wake.clear()
                assert self.cursor is not None
                self.feed_progress.start("feed read")
                batch = await self._read(conn, self.cursor)
                self.feed_progress.ok()
                # No await between these two lines: /ws takes relay.cursor as
                # the seam between a client's catch-up read and the hub.
                self.cursor = batch.end
                if batch.events:
                    self.hub.publish(batch)
                    self.metrics.events_read.inc(len(batch.events))
                    # The leader's dispatcher follows this loop: under load no
                    # writer rings, so the bell cannot be what wakes it.
                    self.dispatcher.wake()
                self.last_read_at = time.time()
                self.feed_state, self.feed_error, attempt = "ok", None, 0
                if batch.more:
                    continue
                if time.monotonic() >= lag_due:
                    self.lag = await measure_lag(conn, self.cursor)
                    lag_due = time.monotonic() + LAG_INTERVAL
                await self._rest(bool(batch.events))
            except CONNECTION_ERRORS as exc:
                await close_quietly(self._feed_conn)
                self._feed_conn = None
                if self._stopping.is_set():
                    return
                self.feed_state = "reconnecting"
                self.feed_error = describe(exc)
                self.feed_progress.failed(self.feed_error)
                delay = backoff(attempt)
                attempt += 1
                log.warning("feed read failed (%s); retrying in %.2fs", self.feed_error, delay)
                await nap(self._stopping, delay)

    async def _read(self, conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> Batch:
        """The next batch after ``cursor``; when the dispatcher asks to join,
        one read from the meet of both cursors serves both."""
        self.feed_reads += 1
        wants = self.dispatcher.join_from
        if wants is None:
            batch = await read_batch(conn, cursor, self.feed.batch_size)
            self.dispatcher.offer(batch)
            return batch
        try:
            both = await read_batch(conn, meet(cursor, wants), self.feed.batch_size)
        except BaseException:
            self.dispatcher.join_failed()
            raise
        if both.more or self.dispatcher.join_from != wants:
            # Not a complete read: its end need not cover what either has passed.
            self.dispatcher.join_failed()
            self.feed_reads += 1
            return await read_batch(conn, cursor, self.feed.batch_size)  # not joined
        # Not full: its end has passed everything either had passed, and
        # each side gets the events it had not.
        self.dispatcher.join(
            Batch([e for e in both.events if not passed(wants, e.id, e.xid)], wants, both.end)
        )
        return Batch([e for e in both.events if not passed(cursor, e.id, e.xid)], cursor, both.end)

    async def _rest(self, busy: bool) -> None:
        """Between reads: poll briefly while events flow (or did within
        QUIET_BEFORE_SLEEP), else fall asleep on the doorbell.

        Asleep = holding the doorbell lock, taken only after every writer in
        flight has committed, and after one more (empty) read: from then on
        every commit rings. On waking, the lock is released before reading.
        """
        bell = self.doorbell
        if bell is None:
            await nap(self._feed_wake, self.feed.poll_interval)
            return
        now = time.monotonic()
        if busy:
            self._last_busy = now
        if now - self._last_busy < QUIET_BEFORE_SLEEP:
            await bell.wake()
            await nap(self._feed_wake, BUSY_POLL)
            return
        if bell.held:
            # The read after taking the lock found nothing: sleep until rung.
            await nap(self._feed_wake, self.feed.poll_interval)
            await bell.wake()
            return
        outcome = await bell.fall_asleep(
            self._feed_wake, min(self.feed.poll_interval, MAX_SLEEP_WAIT)
        )
        if outcome == "failed":
            # No doorbell connection: plain polling (the listener still
            # hears any bell that does ring).
            await nap(self._feed_wake, self.feed.poll_interval)
        # "held": read once more before sleeping; "interrupted"/"timeout": read.

    # --- retention -------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while not self._stopping.is_set():
            await nap(self._stopping, self.retention_interval)
            if self._stopping.is_set() or not self.leadership.is_leader:
                continue
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await connect(self.url, f"outbox retention {self.instance}")
                await retention_round(
                    conn,
                    self.settings.retention.retention,
                    keep_going=lambda: self.leadership.is_leader and not self._stopping.is_set(),
                )
            except CONNECTION_ERRORS as exc:
                log.warning("retention round failed: %s", exc)
            finally:
                await close_quietly(conn)

    # --- status ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        listener = self.listener
        return {
            "instance": self.instance,
            "role": self.leadership.role,
            "listener": "disabled" if listener is None else listener.state,
            "feed": {
                "state": self.feed_state,
                "error": self.feed_error,
                "cursor": self.cursor.encode() if self.cursor else None,
                "last_read_at": self.last_read_at,
                "lag": self.lag.as_dict() if self.lag else None,
                "progress": self.feed_progress.as_dict(),
            },
            "capture": self.capture_check.health(),
            "dispatcher": {
                "cursor": self.dispatcher.cursor.encode()
                if self.leadership.is_leader and self.dispatcher.cursor
                else None,
                "last_dispatch_at": self.dispatcher.last_dispatch_at,
                "progress": self.dispatcher.progress.as_dict()
                if self.leadership.is_leader
                else None,
                "leader_terms_last_minute": self.leadership.recent_terms.recent(),
            },
        }
