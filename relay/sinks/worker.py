"""One sink's publisher: feed -> broker, in commit order, at least once.

The worker runs on a connection that holds the sink's advisory lock
(relay/sinks/runner.py took it), and every statement it runs is on that
session: if the session dies, so does the lock, and the worker's next
statement fails, so it cannot go on publishing as the owner for longer
than one batch. Each round:

1. ``read_batch`` from the cursor: the same gap-free, commit-ordered read as
   the WebSocket feed (relay/feed.py);
2. the events that match ``event_types`` become messages (base.py);
3. ``Publisher.publish`` until the broker acknowledged every one of them,
   retried with backoff (tenacity, around the broker call only) for as long
   as it takes: a sink never skips an event, it waits, and says why in
   ``last_error``;
4. only then the cursor moves, compare-and-set from the value it read: if
   someone else moved it (a PATCH with ``since``, another owner after a
   split), the worker stops.

A crash between 3 and 4 publishes the batch again: JetStream drops the
repeats by ``Nats-Msg-Id`` (within the stream's duplicate window), AMQP
consumers by ``message_id``. Events keep their order because every batch
is published in order on one connection and a batch is re-published from
its start after any failure.

The cursor store runs with ``synchronous_commit = off``: a store lost in a
database crash only means the batch is published again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from opentelemetry.trace import Span
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from outbox.cursor import Cursor
from outbox.events import Matcher
from outbox.relay import tracing
from outbox.relay.feed import Batch, Lag, measure_lag, read_batch
from outbox.relay.reconnect import nap
from outbox.relay.sinks import open_publisher
from outbox.relay.sinks import store as db
from outbox.relay.sinks.base import BrokerError, Publisher, SinkConfig, Template, build_messages

log = logging.getLogger("outbox.relay.sinks")

# An idle worker refreshes owner_seen_at (and decays its rate) this often.
HEARTBEAT = 5.0
# How often the worker measures how far behind the feed it is.
LAG_INTERVAL = 5.0
# The publish rate is averaged over this window.
RATE_WINDOW = 5.0
# While events trickle in, the cursor is stored at most this often (a round
# is then one read and one publish, not also a write). A crash re-publishes
# at most this much more, and the broker / consumer drops it. A backlog page
# (a full batch) is stored at once.
STORE_EVERY = 0.02


class SinkMoved(Exception):
    """The stored cursor is no longer the one this worker wrote: stop."""


class _Stopping(Exception):
    """Raised from the retry's sleep when the worker is told to stop."""


PublisherFactory = Callable[[SinkConfig], Publisher]


class SinkWorker:
    """The publishing loop of one sink (see the module docstring)."""

    def __init__(
        self,
        config: SinkConfig,
        cursor: str,
        conn: psycopg.AsyncConnection[Any],
        *,
        owner: str,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        publisher_factory: PublisherFactory = open_publisher,
        on_published: Callable[[SinkConfig, int], None] | None = None,
        on_error: Callable[[SinkConfig], None] | None = None,
    ) -> None:
        self.config = config
        self.conn = conn
        self.owner = owner
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.publisher_factory = publisher_factory
        self.on_published = on_published
        self.on_error = on_error
        self.stored = cursor
        self.cursor = Cursor.decode(cursor)
        self.state = "starting"
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.published = 0
        self.duplicates = 0
        self.lag: Lag | None = None
        self.matcher = Matcher(list(config.event_types))
        self.template = Template(config.destination_template)
        self._publisher: Publisher | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._unstored = 0  # acknowledged events not counted in the stored row yet
        self._dirty = False  # events passed since the last store
        self._store_due = 0.0
        self._spans: list[Span] = []  # of the batch being published
        # Every BrokerError is retried, for as long as it takes (a sink waits,
        # it never skips): retry_initial * 2**n seconds plus jitter, at most
        # retry_max; the sleep ends early when the worker is told to stop.
        self._retrying = AsyncRetrying(
            retry=retry_if_exception_type(BrokerError),
            wait=wait_exponential_jitter(
                multiplier=retry_initial, max=retry_max, jitter=retry_initial
            ),
            sleep=self._sleep,
            before_sleep=self._failed,
            reraise=True,
        )

    # --- control -----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the batch in hand (or give up its retries), then return from run()."""
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until stopped. Database errors propagate (the lock is gone
        with the session); :class:`SinkMoved` ends the worker too."""
        await self.conn.execute(db.sql("sink_session"))  # why: sql/sinks.sql
        # Say who publishes it (owner) before anything else.
        if not await db.heartbeat(
            self.conn, self.config.id, old=self.stored, rate=0.0, owner=self.owner
        ):
            raise SinkMoved(f"sink {self.config.name}: its cursor was moved")
        self._publisher = self.publisher_factory(self.config)
        self.state = "ok"
        heartbeat_due = time.monotonic() + HEARTBEAT
        lag_due = 0.0
        log.info(
            "sink %s: publishing to %s from after id %s",
            self.config.name,
            self.config.safe_url,
            self.cursor.after,
        )
        ahead: asyncio.Task[Batch] | None = None
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                if ahead is not None:
                    batch, ahead = await ahead, None
                else:
                    batch = await read_batch(self.conn, self.cursor, self.batch_size)
                if batch.events:
                    if batch.more:
                        # A backlog: read the next page while this one is
                        # built, published and acknowledged (the session runs
                        # one statement at a time, so the store below waits
                        # for this read). One turn of the loop first sends
                        # the query, so PostgreSQL works on it meanwhile.
                        ahead = asyncio.create_task(
                            read_batch(self.conn, batch.end, self.batch_size),
                            name=f"sink-{self.config.name}-read",
                        )
                        await asyncio.sleep(0)
                    messages = build_messages(batch.events, self.matcher, self.template)
                    if messages:
                        try:
                            self.duplicates += await self._publish(messages)
                        except _Stopping:
                            await self._store()  # what was acknowledged before
                            return
                    self.published += len(messages)
                    self._unstored += len(messages)
                    self._rate(len(messages))
                    if messages and self.on_published is not None:
                        self.on_published(self.config, len(messages))
                    self.cursor = batch.end
                    self._dirty = True
                    if batch.more or time.monotonic() >= self._store_due:
                        await self._store()
                    heartbeat_due = time.monotonic() + HEARTBEAT
                self.cursor = batch.end
                now = time.monotonic()
                if now >= lag_due:
                    self.lag = await measure_lag(self.conn, self.cursor)
                    lag_due = now + LAG_INTERVAL
                if batch.more:
                    continue
                if self._dirty:
                    # Acknowledged (or passed) but not stored yet: store when
                    # due, unless new events come first (their round stores both).
                    await nap(self._wake, max(0.0, self._store_due - now))
                    if not self._wake.is_set():
                        await self._store()
                    continue
                if now >= heartbeat_due:
                    if not await db.heartbeat(
                        self.conn,
                        self.config.id,
                        old=self.stored,
                        rate=self._rate(0),
                        owner=self.owner,
                    ):
                        raise SinkMoved(f"sink {self.config.name}: its cursor was moved")
                    heartbeat_due = now + HEARTBEAT
                await nap(self._wake, self.poll_interval)
            await self._store()
        finally:
            self.state = "stopped"
            if ahead is not None:
                # Let the read finish (cancelling a statement mid-way would
                # leave the session in doubt); its error, if any, is moot now.
                with contextlib.suppress(Exception):
                    await ahead
            publisher, self._publisher = self._publisher, None
            if publisher is not None:
                await publisher.close()

    async def _store(self) -> None:
        """Move the stored cursor to where publishing is (everything before it
        acknowledged); compare-and-set from what this worker stored last."""
        new = self.cursor.encode()
        self._store_due = time.monotonic() + STORE_EVERY
        if not self._dirty:
            return
        if not await db.store(
            self.conn,
            self.config.id,
            old=self.stored,
            new=new,
            published=self._unstored,
            rate=self._rate(0),
            owner=self.owner,
        ):
            raise SinkMoved(f"sink {self.config.name}: its cursor was moved")
        self.stored, self._unstored, self._dirty = new, 0, False

    async def _publish(self, messages: list[Any]) -> int:
        """Publish until acknowledged; retries only the broker call."""
        publisher = self._publisher
        assert publisher is not None
        # A span per traced message, until the broker acknowledged it (relay/tracing.py).
        spans = self._spans = tracing.start_publish(self.config, messages)
        try:
            duplicates: int = await self._retrying(publisher.publish, messages)
        except BaseException as exc:
            tracing.end_publish(spans, exc)
            raise
        finally:
            self._spans = []
        tracing.end_publish(spans)
        if self.failing_since is not None:
            log.info(
                "sink %s: publishing again after %.1fs of failures",
                self.config.name,
                time.monotonic() - self.failing_since,
            )
        self.state, self.last_error, self.failing_since = "ok", None, None
        return duplicates

    async def _sleep(self, seconds: float) -> None:
        await nap(self._stopping, seconds)
        if self._stopping.is_set():
            raise _Stopping

    async def _failed(self, retry_state: RetryCallState) -> None:
        """Before each backoff: say what failed (log, last_error, metrics)."""
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        error = str(exc) if exc is not None else "unknown error"
        first = self.failing_since is None
        if first:
            self.failing_since = time.monotonic()
        changed = error != self.last_error
        self.state, self.last_error = "retrying", error
        tracing.publish_failed(self._spans, error)
        if self.on_error is not None:
            self.on_error(self.config)
        if first or changed:
            log.warning(
                "sink %s: %s; retrying (attempt %d) with backoff",
                self.config.name,
                error,
                retry_state.attempt_number,
            )
            await db.record_error(self.conn, self.config.id, error=error, owner=self.owner)

    def _rate(self, published: int) -> float:
        """Events per second over the last RATE_WINDOW seconds."""
        now = time.monotonic()
        recent = self._recent
        if published:
            recent.append((now, published))
        while recent and recent[0][0] < now - RATE_WINDOW:
            recent.popleft()
        return round(sum(n for _, n in recent) / RATE_WINDOW, 3)

    # --- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "id": self.config.id,
            "name": self.config.name,
            "kind": self.config.kind,
            "state": self.state,
            "last_error": self.last_error,
            "failing_for_seconds": round(time.monotonic() - self.failing_since, 3)
            if self.failing_since is not None
            else None,
            "cursor": self.stored,
            "published": self.published,
            "duplicates": self.duplicates,
            "lag": self.lag.as_dict() if self.lag else None,
        }
