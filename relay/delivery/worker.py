"""The webhook delivery worker: claim due deliveries, send them, record the outcome.

Three kinds of tasks in one TaskGroup:

* the claimer takes due deliveries (``FOR UPDATE SKIP LOCKED``, with a
  lease) whenever it has room, is woken by :meth:`DeliveryWorker.wake`, and
  otherwise polls, and wakes early for retries it scheduled itself;
* one task per claimed delivery sends it: per-endpoint slot first, then a
  global slot (so deliveries queued for one slow endpoint hold no global
  slot), and the short retries that fit in the lease;
* the recorder writes outcomes in batches: whatever accumulated while the
  previous flush ran goes in the next one, so at load many attempts share
  one transaction and at rest each is written at once.

No HTTP request runs inside a transaction. A crash loses nothing: a claimed
delivery is only finished when its outcome is recorded, and until then its
lease runs out and another worker sends it again (same ``webhook-id``).

Deliveries of an inactive webhook are not claimed: they stay pending, and
are sent when the webhook is active again.

Per-key order needs nothing here: a delivery waiting behind the head of its
key's queue is not due (``sql/012_key_ordering.sql``), so no claim returns
it; the flush that records a head's end promotes the next one, and this
worker then claims again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
import psycopg

from outbox.relay import tracing
from outbox.relay.config import DeliverySettings
from outbox.relay.delivery import store as delivery_db
from outbox.relay.delivery.attempt import post
from outbox.relay.delivery.client import make_client
from outbox.relay.delivery.retry import AttemptResult, RetryPolicy, Stored
from outbox.relay.delivery.signing import redact, sign_headers
from outbox.relay.delivery.ssrf import Resolver
from outbox.relay.delivery.store import Job, Outcome, Release
from outbox.relay.metrics import Metrics
from outbox.relay.reconnect import (
    CONNECTION_ERRORS,
    Reconnecting,
    nap,
)

log = logging.getLogger("outbox.delivery")

_DB_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, *CONNECTION_ERRORS)
# Worth retrying for as long as it takes: the connection, or a lost race
# (deadlock, a delivery deleted between our check and our insert).
_TRANSIENT: tuple[type[Exception], ...] = (
    *CONNECTION_ERRORS,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.ForeignKeyViolation,
    psycopg.errors.SerializationFailure,
)
_MAX_REJECTIONS = 5
_PENDING_REFRESH = 5.0  # seconds between refreshes of the pending gauge
_MAX_TIMERS = 10_000
# After a claim that filled its endpoints: at most this long before claiming
# for other endpoints (a drain of one of them claims at once).
_REFILL_NAP = 0.02


class _Interrupted(Exception):
    """The claim ends without an attempt to record (stopping, or lease nearly over)."""


class _StoppedWaiting(Exception):
    """The worker began stopping during an in-memory wait between attempts."""


class _Run:
    """One claim's short retries (``relay.delivery.retry.InMemoryRun``)."""

    __slots__ = ("attempt", "job", "last_wait", "lease_end", "worker")

    def __init__(
        self,
        worker: DeliveryWorker,
        job: Job,
        lease_end: float,
        attempt: Callable[[], Awaitable[AttemptResult]],
    ) -> None:
        self.worker, self.job, self.lease_end, self.attempt = worker, job, lease_end, attempt
        self.last_wait = 0.0

    def fits(self, wait: float) -> bool:
        """Short, fits in the lease with a whole attempt after it, and not stopping."""
        w = self.worker
        end = asyncio.get_running_loop().time() + wait + w.settings.webhook_timeout
        return wait <= w.policy.memory_max and end <= self.lease_end and not w.stopping

    def hold(self, result: AttemptResult, wait: float) -> None:
        self.last_wait = wait
        self.worker._submit(Outcome(self.job, result, "hold", wait))


class _Endpoint:
    __slots__ = ("in_hand", "slots")

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.in_hand = 0


class DeliveryWorker:
    def __init__(
        self,
        settings: DeliverySettings,
        metrics: Metrics,
        *,
        database_url: str,
        poll_interval: float,
        resolver: Resolver | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        # The claimer's poll timer behind the wake-ups (OUTBOX_POLL_INTERVAL).
        self.poll_interval = poll_interval
        self.metrics = metrics
        self.policy = RetryPolicy(
            settings.retry_schedule, max_age=settings.retry_max_age, sleep=self._retry_sleep
        )
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self._resolver = resolver
        self._lease = settings.lease.total_seconds()
        self._lease_margin = min(1.0, self._lease / 10)
        self._max_in_hand = 2 * settings.delivery_concurrency
        self._endpoint_max_in_hand = 2 * settings.endpoint_concurrency
        self._slots = asyncio.Semaphore(settings.delivery_concurrency)
        self._endpoints: dict[str, _Endpoint] = {}
        self._webhook_endpoint: dict[int, str] = {}
        self._in_hand: dict[int, asyncio.Task[None]] = {}
        self._in_flight = 0
        self._outcomes: list[Outcome] = []
        self._releases: list[Release] = []
        self._timers: list[float] = []  # loop times when retries we stored fall due
        self._pending = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._writes = asyncio.Event()
        self._writes_closed = False
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        metrics.gauge(
            "outbox_deliveries_in_flight",
            "Webhook requests in flight in this process",
            lambda: float(self._in_flight),
        )
        metrics.gauge(
            "outbox_deliveries_claimed",
            "Deliveries claimed by this process, not yet recorded",
            lambda: float(len(self._in_hand)),
        )
        metrics.gauge(
            "outbox_deliveries_pending",
            "Pending deliveries in the database (all processes)",
            lambda: float(self._pending),
        )

    # --- public interface --------------------------------------------------------

    def wake(self) -> None:
        """New deliveries exist (called by the dispatcher or on NOTIFY)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("DeliveryWorker.run() is already running")
        self._running = True
        client = make_client(
            max_connections=self.settings.delivery_concurrency,
            allow=self.settings.webhook_allow_networks,
            resolver=self._resolver,
            proxy=self.settings.webhook_proxy,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                recorder = tg.create_task(self._record_loop(), name="delivery-recorder")
                await self._claim_loop(tg, client)
                await self._drain()
                self._writes_closed = True
                self._writes.set()
                await recorder
        finally:
            await client.aclose()
            self._finished.set()

    async def stop(self) -> None:
        """Stop claiming; let in-flight attempts finish (grace period), record them."""
        self._stopping.set()
        self._wake.set()
        self._room.set()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), self._grace() + 10.0)

    async def _retry_sleep(self, wait: float) -> None:
        """An in-memory wait between attempts; cut short (and abandoned) by stop()."""
        await nap(self._stopping, wait)
        if self._stopping.is_set():
            raise _StoppedWaiting

    # --- claiming ----------------------------------------------------------------

    def _grace(self) -> float:
        return self.settings.webhook_timeout + 1.0

    def _claim_limit(self, room: int) -> int:
        """How many deliveries to claim: one endpoint's concurrency (or less room).

        A claim returns the oldest due deliveries, often all for one endpoint,
        and what that endpoint cannot take would go straight back (a release:
        one more write each, and a row nobody claims again until the next
        wake-up). So a claim asks for no more than an endpoint's concurrency,
        and skips every endpoint with less room than that (:meth:`_skipped`):
        whatever it returns, the endpoint takes. An endpoint is refilled when
        its claimed queue runs dry (``_deliver``); a full batch is followed by
        the next claim at once.
        """
        return min(room, self.settings.endpoint_concurrency)

    def _skipped(self, limit: int) -> list[int]:
        """Webhooks whose endpoint has room for fewer than ``limit`` more deliveries."""
        full = {
            key
            for key, ep in self._endpoints.items()
            if self._endpoint_max_in_hand - ep.in_hand < limit
        }
        return sorted(w for w, key in self._webhook_endpoint.items() if key in full)

    def _filled(self, jobs: list[Job]) -> bool:
        """Whether every endpoint of ``jobs`` has less room than a claim asks for."""
        limit = self.settings.endpoint_concurrency
        for key in {job.endpoint for job in jobs}:
            ep = self._endpoints.get(key)
            if ep is None or self._endpoint_max_in_hand - ep.in_hand >= limit:
                return False
        return True

    def _idle_timeout(self, now: float) -> float:
        while self._timers and self._timers[0] <= now:
            heapq.heappop(self._timers)
        poll = self.poll_interval
        return min(poll, self._timers[0] - now) if self._timers else poll

    async def _claim_loop(self, tg: asyncio.TaskGroup, client: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        db = Reconnecting(
            self.database_url, "outbox-delivery-claim", what="delivery claim", wake=self._wake
        )
        counted_at = float("-inf")
        try:
            while not self._stopping.is_set():
                room = self._max_in_hand - len(self._in_hand)
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()  # a delivery finished, or stop
                    continue
                self._wake.clear()
                started = loop.time()
                try:
                    conn = await db.connection()
                    limit = self._claim_limit(room)
                    jobs = await delivery_db.claim(
                        conn,
                        worker=self.worker_id,
                        limit=limit,
                        lease=self.settings.lease,
                        skip=self._skipped(limit),
                    )
                    if started - counted_at >= _PENDING_REFRESH:
                        self._pending = await delivery_db.pending_count(conn)
                        counted_at = started
                    db.ok()
                except _DB_ERRORS as exc:
                    await db.failed(exc)
                    continue
                lease_end = started + self._lease - self._lease_margin
                for job in jobs:
                    self._admit(tg, client, job, lease_end)
                if len(jobs) < limit:
                    await nap(self._wake, self._idle_timeout(loop.time()))
                elif self._filled(jobs):
                    # A full batch that filled every endpoint it went to: the
                    # next claim would skip them, and most often find nothing
                    # else (an empty claim walks all their due rows). Claim
                    # again when one of them drains (wake), or soon anyway
                    # for the other endpoints' deliveries.
                    await nap(self._wake, min(_REFILL_NAP, self._idle_timeout(loop.time())))
        finally:
            await db.close()

    def _admit(
        self, tg: asyncio.TaskGroup, client: httpx.AsyncClient, job: Job, lease_end: float
    ) -> None:
        key = job.endpoint
        self._webhook_endpoint[job.webhook_id] = key
        ep = self._endpoints.get(key)
        if ep is None:
            ep = self._endpoints[key] = _Endpoint(self.settings.endpoint_concurrency)
        if ep.in_hand >= self._endpoint_max_in_hand:
            # More than this worker takes for one endpoint: back to the queue
            # (the next claims skip this endpoint until it has room again).
            self._release(Release(job))
            return
        ep.in_hand += 1
        self._in_hand[job.id] = tg.create_task(
            self._deliver(client, job, key, ep, lease_end), name=f"delivery-{job.id}"
        )

    async def _drain(self) -> None:
        """Give in-hand deliveries the grace period, then cancel (and release) the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace()
        while self._in_hand and loop.time() < deadline:
            self._room.clear()
            await nap(self._room, deadline - loop.time())
        tasks = list(self._in_hand.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- sending -----------------------------------------------------------------

    async def _deliver(
        self, client: httpx.AsyncClient, job: Job, key: str, ep: _Endpoint, lease_end: float
    ) -> None:
        try:
            await self._attempts(client, job, ep, lease_end)
        except asyncio.CancelledError:
            self._release(Release(job))
            raise
        except _Interrupted:
            pass
        except Exception as exc:  # a bug here must not stop every other delivery
            log.exception("delivery %s: unexpected error", job.id)
            # Recorded as a failed attempt, so the schedule bounds it and it shows.
            self._finish(
                job,
                AttemptResult(
                    attempt=job.attempt,
                    started_at=time.time(),
                    duration=0.0,
                    error_class=type(exc).__name__,
                    error_message=str(exc) or repr(exc),
                ),
            )
        finally:
            ep.in_hand -= 1
            if ep.in_hand == self.settings.endpoint_concurrency:
                # This endpoint's claimed queue just ran dry (only in-flight
                # sends are left): claim more now. Claims skip a saturated
                # endpoint, so without this wake-up a single busy endpoint got
                # one claim per poll interval (B4 in BENCHMARKS.md: ~31/s).
                self._wake.set()
            if ep.in_hand == 0:
                self._endpoints.pop(key, None)
            self._in_hand.pop(job.id, None)
            self._room.set()

    async def _attempts(
        self, client: httpx.AsyncClient, job: Job, ep: _Endpoint, lease_end: float
    ) -> None:
        loop = asyncio.get_running_loop()
        if job.created_at is None:
            missing = AttemptResult(
                attempt=job.attempt,
                started_at=time.time(),
                duration=0.0,
                error_class="EventMissing",
                error_message=f"event {job.event_id} no longer exists (removed by retention)",
            )
            self._submit(Outcome(job, missing, "failed"))
            return

        async def once() -> AttemptResult:
            """The network call (and its signature): all tenacity wraps."""
            async with ep.slots, self._slots:
                now = loop.time()
                if lease_end - now < min(1.0, self.settings.webhook_timeout):
                    # Waited for a slot until the lease is nearly over: an
                    # attempt now would be cut short; give the delivery back.
                    self._release(Release(job))
                    raise _Interrupted
                deadline = min(now + self.settings.webhook_timeout, lease_end)
                timestamp = time.time()
                headers = sign_headers(
                    body=job.body,
                    event_id=job.event_id,
                    event_type=job.event_type,
                    webhook_id=job.webhook_id,
                    secret=job.secret,
                    previous_secret=job.previous_secret,
                    timestamp=int(timestamp),
                    seed_secret=job.seed_secret,
                )
                if job.headers:
                    # The webhook's own headers first; none may shadow the relay's
                    # (relay/delivery/headers.py refuses those names at the API).
                    headers = {**job.headers, **headers}
                # traceparent/tracestate: this attempt's span (relay/tracing.py).
                span = tracing.start_attempt(
                    headers,
                    job.traceparent,
                    job.tracestate,
                    url=job.url,
                    attempt=job.attempt,
                    delivery_id=job.id,
                    webhook_id=job.webhook_id,
                    event_id=job.event_id,
                    event_type=job.event_type,
                )
                self._in_flight += 1
                result: AttemptResult | None = None
                try:
                    result = await post(
                        client,
                        job.url,
                        job.body,
                        headers,
                        attempt=job.attempt,
                        deadline=deadline,
                        body_cap=self.settings.response_body_cap,
                        age=job.age(timestamp),
                    )
                finally:
                    self._in_flight -= 1
                    if span is not None:
                        tracing.end_attempt(span, result)
            result.request_headers = redact(headers)
            job.attempt += 1
            return result

        # The short retries of one claim run under tenacity; what does not fit
        # in memory is stored in the row (tenacity decided the wait).
        run = _Run(self, job, lease_end, once)
        try:
            outcome = await self.policy.in_memory(run)
        except _StoppedWaiting:
            self._release(Release(job, delay=run.last_wait))
            raise _Interrupted from None
        if isinstance(outcome, Stored):
            if outcome.delay is None:
                self._submit(Outcome(job, outcome.result, "failed"))
            else:
                self._submit(Outcome(job, outcome.result, "retry", outcome.delay))
        else:
            self._finish(job, outcome)

    def _finish(self, job: Job, result: AttemptResult) -> None:
        """Submit the claim's last attempt: success, a stored retry, or failed."""
        if result.ok:
            self._submit(Outcome(job, result, "success"))
            return
        delay = self.policy.next_delay(result)
        self._submit(Outcome(job, result, "failed" if delay is None else "retry", delay))

    # --- recording ---------------------------------------------------------------

    def _submit(self, outcome: Outcome) -> None:
        state = outcome.state
        self.metrics.attempts.inc(outcome="retry" if state == "hold" else state)
        self.metrics.attempt_latency.observe(outcome.result.duration)
        self._outcomes.append(outcome)
        self._writes.set()

    def _release(self, release: Release) -> None:
        self._releases.append(release)
        self._writes.set()

    async def _record_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # No wake-up: a retry waits its whole backoff (shutdown is bounded by give_up_at).
        db = Reconnecting(self.database_url, "outbox-delivery-record", what="recording deliveries")
        give_up_at: float | None = None
        rejected = 0
        try:
            while True:
                if not self._outcomes and not self._releases:
                    if self._writes_closed:
                        return
                    self._writes.clear()
                    await self._writes.wait()
                    continue
                outcomes, releases = self._outcomes, self._releases
                self._outcomes, self._releases = [], []
                try:
                    conn = await db.connection()
                    done = await delivery_db.flush(
                        conn, outcomes, releases, disable_after=self.settings.disable_after
                    )
                except _DB_ERRORS as exc:
                    # Keep the batch and try again. It is dropped only at
                    # shutdown after the grace period, or when the database
                    # keeps rejecting it (not a connection problem): then its
                    # leases run out and the deliveries are sent again (at
                    # least once, never lost).
                    self._outcomes[:0], self._releases[:0] = outcomes, releases
                    rejected = 0 if isinstance(exc, _TRANSIENT) else rejected + 1
                    if rejected >= _MAX_REJECTIONS:
                        log.error(
                            "dropping %d outcomes the database rejects: %s",
                            len(self._outcomes),
                            exc,
                        )
                        self._outcomes, self._releases, rejected = [], [], 0
                        continue
                    if self._writes_closed:
                        give_up_at = give_up_at or loop.time() + self._grace()
                        if loop.time() >= give_up_at:
                            log.error(
                                "dropping %d unrecorded outcomes at shutdown: %s",
                                len(self._outcomes),
                                exc,
                            )
                            return
                    # The connection is kept when the database answered (it
                    # refused the statement): only a lost one is replaced.
                    await db.failed(exc, close=isinstance(exc, CONNECTION_ERRORS))
                    continue
                db.ok()
                rejected = 0
                if done.promoted:
                    # The next deliveries of key queues whose head just ended
                    # are due now: claim them (other processes see them at
                    # their next poll; a doorbell would have them all race
                    # for the same rows).
                    self._wake.set()
                self._schedule(outcomes, loop.time())
                if done.recorded < len({o.job.id for o in outcomes}):
                    log.info(
                        "some deliveries were re-claimed after their lease ran out; "
                        "their outcome was kept as attempt history only"
                    )
        finally:
            await db.close()

    def _schedule(self, outcomes: list[Outcome], now: float) -> None:
        """Wake the claimer when retries this worker stored fall due."""
        for o in outcomes:
            if o.state == "retry" and o.delay is not None and len(self._timers) < _MAX_TIMERS:
                heapq.heappush(self._timers, now + o.delay + 0.01)
        if self._timers:
            self._wake.set()
