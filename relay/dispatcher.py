"""The dispatcher (leader only): feed batches -> delivery rows.

It reads the feed from its own cursor, persisted in ``outbox.relay_state``
(name :data:`outbox.names.DISPATCHER_STATE`), and for each batch runs one
transaction (one autocommit statement when the batch has no keyed event:
:func:`dispatch`) that

* moves the stored cursor from the value it read to the batch's end
  (compare-and-set: if another relay moved it meanwhile, nothing happens and
  this relay steps down),
* inserts one ``outbox.deliveries`` row per (active webhook whose
  ``event_types`` match, event), ``ON CONFLICT DO NOTHING`` on the
  (webhook, event) key,
* NOTIFYs ``outbox_deliveries`` when it created any, waking the senders
  of every process,
* and, for webhooks with ``ordering: key``, inserts keyed deliveries
  waiting in their (webhook, key) queue, locks those webhooks, and in a
  second statement gives each queue without a head its oldest delivery
  (``delivery_promote``; why a second statement: ``sql/012_key_ordering.sql``).

So a crash at any moment either keeps the whole batch (cursor and rows) or
none of it: the batch is dispatched again and the unique key absorbs the
repeat. Nothing is lost, nothing doubled.

Event ids only grow (relay/progress.py): before dispatching a batch that
holds rows at or below its cursor (late rows, or a reset sequence's reused
ids) and at the start of each term, the dispatcher checks that the id
sequence is not below its cursor. If it is, it refuses to dispatch — ids
would collide with old deliveries and with ``webhook-id`` values receivers
have seen — and says so in ``/health`` until ``outbox repair
--fix-sequence`` has run; then it goes on by itself.

One read per process: in ``outbox serve`` the dispatcher does not read the
feed while it is joined to the relay's feed loop (relay/runtime.py). It
reads on its own only to catch up (from its stored cursor at the start of a
term, or after falling behind by MAX_QUEUED batches); once a read of its own
comes back not full it asks to join, the feed loop reads once from the meet
of both cursors and hands each side the events it has not passed (see
:func:`outbox.cursor.meet`), and from then on the dispatcher takes the feed
loop's batches, each starting where the previous one ended, merged up to a
batch size per dispatch.

The first leader ever starts from ``Cursor(0)``, so events committed before
any relay ran are dispatched too. ``webhook.test`` events are never routed
by subscription (the API inserts those deliveries itself). Inactive webhooks
get nothing, which also keeps ``webhook.disabled`` and
``webhook.delivery_failed`` away from the disabled webhook they are about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import psycopg
from psycopg.rows import scalar_row

from outbox.cursor import Cursor
from outbox.errors import LostLeadership
from outbox.names import DELIVERIES_CHANNEL, DISPATCHER_STATE
from outbox.relay import tracing
from outbox.relay.delivery import store as delivery_db
from outbox.relay.feed import Batch, Event, read_batch
from outbox.relay.metrics import Metrics
from outbox.relay.progress import Progress, ids_went_backwards, sequence_high
from outbox.relay.reconnect import describe, nap
from outbox.rows import record_row
from outbox.sqlfiles import bare_query, query

log = logging.getLogger("outbox.relay.dispatcher")

# After a round that dispatched something, wait this long before the next
# read. Under load the feed loop wakes the dispatcher after every batch it
# reads (every millisecond or two); each round is a read and a write
# transaction, so without the gap the dispatcher would spend two round trips
# per tiny batch. The gap groups them, for at most this much more
# commit -> webhook latency.
DISPATCH_GAP = 0.005
# Feed batches waiting for a joined dispatcher; past this it leaves the feed
# loop and catches up by reading on its own.
MAX_QUEUED = 1000


class Waker(Protocol):
    def wake(self) -> None: ...


class _Dispatched(NamedTuple):
    moved: int
    created: int
    rang: int
    ordered: int
    queue_webhooks: list[int]
    queue_keys: list[str]


async def load_cursor(conn: psycopg.AsyncConnection[Any]) -> tuple[Cursor, str | None]:
    """The stored dispatcher cursor and its raw value (``Cursor(0)``, None if absent)."""
    cur = conn.cursor(row_factory=scalar_row)
    await cur.execute(query("relay_state_get", "relay_state.sql"), {"name": DISPATCHER_STATE})
    value = await cur.fetchone()
    if value is None:
        return Cursor(0), None
    return Cursor.decode(value), str(value)


async def dispatch(conn: psycopg.AsyncConnection[Any], batch: Batch, stored: str | None) -> int:
    """Create the batch's delivery rows and store its end cursor, atomically.

    ``conn`` must be in autocommit mode (this function makes the batch's
    transaction). Returns the number of delivery rows created. Raises
    :class:`LostLeadership` when the stored cursor is no longer ``stored``.

    Round trips: a batch without keyed events cannot need a promotion (only
    keyed deliveries wait in a queue), so ``dispatch_batch`` runs alone as
    one autocommit statement: its cursor move, rows and NOTIFY commit
    together, in one round trip instead of three (BEGIN, statement,
    COMMIT). A batch with keyed events keeps the transaction: the promotion
    (``ordering: key`` webhooks) must follow the statement's lock in it.
    Pipelining BEGIN with the statement there was measured slower
    (psycopg's pipeline enter/exit cost more than the round trip it saves:
    BENCHMARKS.md, issue 22).
    """
    events = batch.events
    params = {
        "name": DISPATCHER_STATE,
        "old": stored,
        "new": batch.end.encode(),
        "ids": [e.id for e in events],
        "types": [e.type for e in events],
        "keys": [e.key for e in events],
        "channel": DELIVERIES_CHANNEL,
    }
    cur = conn.cursor(row_factory=record_row(_Dispatched))
    keyed = any(e.key is not None for e in events)
    # Without keys the one statement is its own transaction: all of it or none.
    async with conn.transaction() if keyed else contextlib.nullcontext():
        await cur.execute(bare_query("dispatch_batch", "dispatch.sql"), params)
        row = await cur.fetchone()
        assert row is not None
        assert keyed or not row.queue_webhooks  # no key, no queue
        if not row.moved:  # then nothing was created either (WHERE EXISTS moved)
            raise LostLeadership("the dispatcher cursor was moved by another relay")
        if row.queue_webhooks:
            # dispatch_batch locked these webhooks; this statement reads the
            # queues after that lock (sql/012_key_ordering.sql).
            await delivery_db.promote(
                conn, list(zip(row.queue_webhooks, row.queue_keys, strict=True))
            )
    return int(row.created)


class Dispatcher:
    """The leader's dispatch loop; see the module docstring."""

    def __init__(
        self,
        metrics: Metrics,
        sender: Waker,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 1000,
    ) -> None:
        self.metrics = metrics
        self.sender = sender
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.cursor: Cursor | None = None
        self.last_dispatch_at: float | None = None
        self.progress = Progress()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # Sharing the feed loop's reads (set by the relay runtime): called
        # when the dispatcher asks to join.
        self.on_join_request: Callable[[], None] | None = None
        self.join_from: Cursor | None = None  # asking to join, from here
        self.joined = False
        self.own_reads = 0
        self._fed: deque[Batch] = deque()

    def wake(self) -> None:
        self._wake.set()

    # --- sharing the feed loop's reads ------------------------------------

    def join(self, batch: Batch) -> None:
        """The feed loop's answer to ``join_from``: the first shared batch
        (``batch.start`` is ``join_from``)."""
        if self.join_from is None or batch.start != self.join_from:
            return
        self.join_from = None
        self._fed.clear()
        self._fed.append(batch)
        self.joined = True
        self._wake.set()

    def join_failed(self) -> None:
        self.join_from = None
        self._wake.set()

    def offer(self, batch: Batch) -> None:
        """A feed batch read by the feed loop (every one, empty or not)."""
        if not self.joined:
            return
        if len(self._fed) >= MAX_QUEUED:
            log.info("dispatcher fell %d feed batches behind; reading on its own", MAX_QUEUED)
            self._leave()
            return
        self._fed.append(batch)
        self._wake.set()

    def _leave(self) -> None:
        self.joined = False
        self.join_from = None
        self._fed.clear()

    def _take(self, cursor: Cursor) -> Batch | None:
        """The queued feed batches from ``cursor`` on, merged up to a batch size."""
        events: list[Event] = []
        start = end = cursor
        while self._fed and (
            not events or len(events) + len(self._fed[0].events) <= self.batch_size
        ):
            b = self._fed.popleft()
            if b.start != end:  # not the chain we follow: catch up on our own
                self._leave()
                return None
            events.extend(b.events)
            end = b.end
        return Batch(events, start, end, bool(self._fed))

    async def run(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Dispatch on ``conn`` (the leader's session) until stopped.

        Connection errors propagate: the leader steps down and campaigns again.
        """
        try:
            await self._run(conn)
        except Exception as exc:
            self.progress.failed(describe(exc))
            raise

    async def _run(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # synchronous_commit off: why it is safe is in sql/dispatch.sql.
        await conn.execute(query("dispatcher_session", "dispatch.sql"))
        cursor, stored = await load_cursor(conn)
        self.cursor = cursor
        log.info("dispatching from cursor after id %s", cursor.after)
        # A cursor beyond the log's end: refuse before anything is read.
        if await self._ids_forward(conn, cursor) is None:
            return
        self._leave()
        try:
            await self._loop(conn, cursor, stored)
        finally:
            self._leave()

    async def _loop(
        self, conn: psycopg.AsyncConnection[Any], cursor: Cursor, stored: str | None
    ) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if self.joined or self.join_from is not None:
                got = self._take(cursor) if self._fed else None
                if got is None:
                    if self.joined or self.join_from is not None:
                        await nap(self._wake, self.poll_interval)
                    continue
                batch = got
            else:
                self.progress.start("feed read")
                batch = await read_batch(conn, cursor, self.batch_size)
                self.own_reads += 1
            if any(e.id <= cursor.after for e in batch.events):
                # Late rows, or ids handed out again after a reset: which?
                refused = await self._ids_forward(conn, cursor)
                if refused is None:
                    return
                if refused:
                    self._leave()  # read again on our own
                    continue  # repaired meanwhile: read again (ids were renumbered)
            if batch.events:
                self.progress.start("dispatch")
                started_ns = time.time_ns()
                created = await dispatch(conn, batch, stored)
                tracing.dispatched(batch.events, started_ns, created)
                stored = batch.end.encode()
                self.last_dispatch_at = time.time()
                if created:
                    self.metrics.deliveries_created.inc(created)
                    self.sender.wake()
            self.progress.ok()
            cursor = self.cursor = batch.end
            if batch.more:
                continue
            if not self.joined and self.on_join_request is not None:
                # Caught up: ask the feed loop to read for both of us.
                self.join_from = cursor
                self.on_join_request()
                continue
            if batch.events:
                await nap(self._stopping, DISPATCH_GAP)
            if not self._fed:
                await nap(self._wake, self.poll_interval)

    async def _ids_forward(self, conn: psycopg.AsyncConnection[Any], cursor: Cursor) -> bool | None:
        """Wait while the id sequence is below ``cursor``, refusing and saying so.

        Returns whether it had to refuse (False: ids were fine at once), or
        None when the relay stopped meanwhile.
        """
        refused = False
        while not self._stopping.is_set():
            problem = ids_went_backwards(await sequence_high(conn), cursor.after)
            if problem is None:
                if refused:
                    log.warning("event ids go forward again; dispatching resumes")
                    self.progress.ok()
                return refused
            self.progress.refuse(problem)
            if not refused:
                log.error("%s", problem)
                refused = True
            await nap(self._stopping, max(self.poll_interval, 1.0))
        return None

    async def stop(self) -> None:
        """Finish the current batch (its transaction), then return from run()."""
        self._stopping.set()
        self._wake.set()
