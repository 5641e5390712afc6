"""The composition root: one object builds and owns every long-running part.

    NOTIFY outbox_events ─► Listener ─┬─► FeedLoop ──► hub.publish(batch)   (every process)
              (or the poll timer)     │        └─────► sinks.wake()
                                      └─► Dispatcher ─► delivery rows ──► sender.wake()
                                             ▲          (leader only, see relay/leader.py)
    NOTIFY outbox_deliveries ─► sender.wake()│
                                   RetentionLoop (leader only), CaptureCheck

:class:`Service` builds them all, each from its own settings group
(outbox.relay.config), and has one contract (river's start_stop, procrastinate's
worker):

* :meth:`Service.start` opens the pool, reads the head of the feed (so
  ``cursor`` is known before the app serves; raises if the database cannot be
  reached), then runs every part as a named task under one supervisor;
* if a part fails, or ends while the service is not stopping, the supervisor
  cancels the others: :attr:`Service.failure` says why and :meth:`Service.wait`
  returns (``outbox serve`` then exits 1);
* :meth:`Service.stop` (grace) asks every part to finish what it holds (the
  feed its batch, the sender its attempts in flight: a grace of at least one
  webhook attempt), waits up to ``grace`` seconds in all (a part that holds
  no work in flight, :data:`PART_GRACE` at most), then cancels what is left
  (at most :data:`CANCEL_TIMEOUT` more) and closes the pool;
* :meth:`Service.status` is one typed snapshot (:class:`ServiceStatus`) that
  ``GET /health`` renders.

Each loop runs on its own dedicated connection and survives a lost server by
itself (relay/reconnect.py); only a failure that is not a lost connection (a
bug, a missing schema) ends a part, and with it the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from outbox.cursor import Cursor
from outbox.errors import RelayError
from outbox.names import DELIVERIES_CHANNEL, EVENTS_CHANNEL
from outbox.relay.capture_check import CAPTURE_CHECK_INTERVAL, CaptureCheck
from outbox.relay.config import RelaySettings
from outbox.relay.delivery.worker import DeliveryWorker
from outbox.relay.dispatcher import Dispatcher, Waker
from outbox.relay.hub import Hub
from outbox.relay.leader import Leadership
from outbox.relay.listener import Listener
from outbox.relay.metrics import Metrics
from outbox.relay.reconnect import configure_api_session
from outbox.relay.retention import RETENTION_INTERVAL, RetentionLoop
from outbox.relay.runtime import BatchSink, FeedLoop, FeedStatus
from outbox.relay.sinks.runner import SinkRunner, WakingHub

log = logging.getLogger("outbox.relay")

# After the grace period, cancelled tasks get this long to unwind.
CANCEL_TIMEOUT = 5.0
# The most a part that holds no work in flight gets to stop (all but the sender).
PART_GRACE = 10.0
# Beyond one webhook attempt, what the default grace gives the sender to
# record its outcomes and every other part to finish its statement.
GRACE_MARGIN = 5.0


class DispatcherStatus(BaseModel):
    """The dispatcher, as this process sees it (its cursor only while leader)."""

    cursor: str | None
    last_dispatch_at: float | None
    progress: dict[str, Any] | None
    leader_terms_last_minute: int


class ServiceStatus(BaseModel):
    """One snapshot of every part (``GET /health`` adds the database's view)."""

    instance: str
    state: str  # starting, running, stopping, stopped, failed
    failure: str | None
    role: str  # leader, follower
    listener: str  # connected, reconnecting, starting, stopped, disabled
    feed: FeedStatus
    capture: dict[str, Any]
    dispatcher: DispatcherStatus
    sinks: dict[str, Any]


class Service:
    """Every long-running part of ``outbox serve`` (see the module docstring).

    ``hub`` and ``sender`` may be given (tests record what the feed publishes
    and whom the dispatcher wakes); otherwise they are built here.
    """

    def __init__(
        self,
        settings: RelaySettings,
        *,
        metrics: Metrics | None = None,
        hub: BatchSink | None = None,
        sender: Waker | None = None,
        leader_retry_interval: float = 1.0,
        retention_interval: float = RETENTION_INTERVAL,
        capture_check_interval: float = CAPTURE_CHECK_INTERVAL,
    ) -> None:
        self.settings = settings
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.metrics = metrics if metrics is not None else Metrics()
        url = settings.database.url
        feed = settings.feed
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=2,
            max_size=10,
            open=False,
            kwargs={"autocommit": True, "application_name": "outbox api"},
            configure=configure_api_session,
            name="outbox-api",
            # After a server restart the pooled connections are dead; checking
            # on checkout turns that into a fresh connection, not a failed request.
            check=AsyncConnectionPool.check_connection,
        )
        self.hub: Any = hub if hub is not None else Hub(settings.hub, self.metrics)
        self.sender: Any = (
            sender
            if sender is not None
            else DeliveryWorker(
                settings.delivery,
                self.metrics,
                database_url=url,
                poll_interval=feed.poll_interval,
            )
        )
        self.sinks = SinkRunner(
            url,
            self.metrics,
            instance=self.instance,
            batch_size=feed.batch_size,
            poll_interval=feed.poll_interval,
        )
        self.dispatcher = Dispatcher(
            self.metrics, self.sender, poll_interval=feed.poll_interval, batch_size=feed.batch_size
        )
        # The feed hands each batch to the hub and wakes the sinks and the
        # dispatcher (which joins the feed's reads once it has caught up).
        self.feed = FeedLoop(
            url,
            feed,
            self.metrics,
            hub=WakingHub(self.hub, self.sinks),
            dispatcher=self.dispatcher,
            instance=self.instance,
        )
        self.dispatcher.on_join_request = self.feed.wake
        self.leadership = Leadership(
            url,
            self.dispatcher.run,
            application_name=f"outbox leader {self.instance}",
            retry_interval=leader_retry_interval,
        )
        self.listener: Listener | None = (
            Listener(
                url,
                [EVENTS_CHANNEL, DELIVERIES_CHANNEL],
                on_notify=self._on_notify,
                on_connect=self._on_listen,
                application_name=f"outbox listener {self.instance}",
            )
            if feed.notify
            else None
        )
        self.retention = RetentionLoop(
            url,
            settings.retention,
            is_leader=lambda: self.leadership.is_leader,
            instance=self.instance,
            interval=retention_interval,
        )
        # No silent stop: every capture rule's trigger checked (issue 21).
        self.capture_check = CaptureCheck(
            url, self.metrics, instance=self.instance, interval=capture_check_interval
        )
        self.state = "new"
        self.failure: BaseException | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ended = asyncio.Event()
        self._gauges()

    # --- the parts ------------------------------------------------------------

    def _parts(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("relay-feed", self.feed.run),
            ("relay-leader", self.leadership.run),
            ("relay-retention", self.retention.run),
            ("relay-capture-check", self.capture_check.run),
            ("sinks", self.sinks.run),
        ]
        if isinstance(self.sender, DeliveryWorker):
            parts.append(("sender", self.sender.run))
        if isinstance(self.hub, Hub):
            hub = self.hub
            parts.append(("hub", lambda: hub.run(self.pool)))
        if self.listener is not None:
            parts.append(("relay-listener", self.listener.run))
        return parts

    @property
    def cursor(self) -> Cursor | None:
        """The end of the last batch handed to the hub (``/ws``'s seam); None until start()."""
        return self.feed.cursor

    def _on_notify(self, channel: str) -> None:
        if channel == EVENTS_CHANNEL:
            self.feed.wake()
            self.dispatcher.wake()
        elif channel == DELIVERIES_CHANNEL:
            self.sender.wake()

    def _on_listen(self) -> None:
        # (Re)LISTENing: whatever committed while nobody listened is found by
        # an immediate read.
        self.feed.wake()
        self.dispatcher.wake()
        self.sender.wake()

    # --- start / stop ---------------------------------------------------------

    async def start(self) -> None:
        """Open the pool, read the head of the feed, run every part.

        Raises (and starts nothing) if the database cannot be reached.
        """
        if self.state != "new":
            raise RuntimeError(f"Service.start(): the service is {self.state}")
        self.state = "starting"
        try:
            await self.pool.open(wait=False)
            await self.feed.start()
        except BaseException:
            self.state = "stopped"
            await self.pool.close()
            self._ended.set()
            raise
        self.state = "running"
        self._supervisor = asyncio.create_task(self._supervise(), name="service")

    async def _supervise(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = [
                    tg.create_task(self._guard(name, run), name=name) for name, run in self._parts()
                ]
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError) and self.failure is None:
                first = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                self.failure = first
                self.state = "failed"
                log.error("a part of the service failed; stopping the others", exc_info=first)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._ended.set()

    async def _guard(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        await run()
        if self.state == "running":
            # A part may only end because the service stops.
            raise RelayError(f"{name} stopped by itself")

    async def wait(self) -> None:
        """Until the service has stopped (after stop(), or because a part failed)."""
        await self._ended.wait()

    def default_grace(self) -> float:
        """One webhook attempt (what the sender drains) plus GRACE_MARGIN."""
        return self.settings.delivery.webhook_timeout + 1.0 + GRACE_MARGIN

    async def stop(self, grace: float | None = None) -> None:
        """Ask every part to finish, wait up to ``grace`` s in all, cancel the rest.

        The dispatcher's cursor is stored with each batch it dispatches and
        the sender records its outcomes before it ends: nothing else is saved.
        """
        if self.state in ("new", "stopped"):
            self.state = "stopped"
            await self.pool.close()
            return
        if self.state == "running":
            self.state = "stopping"
        grace = self.default_grace() if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        stops: list[Awaitable[None]] = [
            self.feed.stop(),
            self.dispatcher.stop(),
            self.leadership.stop(),
            self.retention.stop(),
            self.capture_check.stop(),
            self.sinks.stop(),
        ]
        if isinstance(self.sender, DeliveryWorker):
            stops.append(self.sender.stop())
        if isinstance(self.hub, Hub):
            stops.append(self.hub.stop())
        if self.listener is not None:
            stops.append(self.listener.stop())
        # Every part is asked at once (the sender's drain is the long one).
        asked = [asyncio.ensure_future(stop) for stop in stops]
        # A part that holds no work in flight gets PART_GRACE at most: what it
        # may still wait on (a broker that does not answer, a lock) is safe
        # to abandon, its cursor moves only after an acknowledgement. The
        # sender holds webhook attempts: it gets the whole grace.
        idle = [t for t in self._tasks if t.get_name() != "sender"]
        await self._cancel_late(idle, min(deadline, loop.time() + PART_GRACE))
        await self._cancel_late(self._tasks, deadline)
        for future in asked:
            future.cancel()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            try:
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    await asyncio.gather(supervisor, return_exceptions=True)
            except TimeoutError:
                supervisor.cancel()
                log.error("the service's tasks did not end after being cancelled")
        await self.feed.close()
        await self.pool.close()
        if self.state != "failed":
            self.state = "stopped"
        log.info("relay %s stopped", self.instance)

    async def _cancel_late(self, tasks: list[asyncio.Task[None]], deadline: float) -> None:
        """Wait for ``tasks`` until ``deadline`` (loop time); cancel those still running."""
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(pending, timeout=timeout)
        if late:
            names = sorted(t.get_name() for t in late)
            log.warning("%s did not stop in time; cancelling", ", ".join(names))
            for t in late:
                t.cancel()
            await asyncio.wait(late, timeout=CANCEL_TIMEOUT)

    # --- status ---------------------------------------------------------------

    def status(self) -> ServiceStatus:
        leader = self.leadership.is_leader
        dispatcher = self.dispatcher
        return ServiceStatus(
            instance=self.instance,
            state=self.state,
            failure=None if self.failure is None else repr(self.failure),
            role=self.leadership.role,
            listener="disabled" if self.listener is None else self.listener.state,
            feed=self.feed.status(),
            capture=self.capture_check.health(),
            dispatcher=DispatcherStatus(
                cursor=dispatcher.cursor.encode() if leader and dispatcher.cursor else None,
                last_dispatch_at=dispatcher.last_dispatch_at,
                progress=dispatcher.progress.as_dict() if leader else None,
                leader_terms_last_minute=self.leadership.recent_terms.recent(),
            ),
            sinks=self.sinks.health(),
        )

    def _gauges(self) -> None:
        m = self.metrics
        m.gauge(
            "outbox_relay_leader",
            "1 if this relay is the leader (dispatches deliveries, applies retention)",
            lambda: float(self.leadership.is_leader),
        )
        m.gauge(
            "outbox_dispatcher_seconds_since_progress",
            "Seconds since the dispatcher last moved forward (leader only; 0 on followers)",
            lambda: self.dispatcher.progress.since_ok() if self.leadership.is_leader else 0.0,
        )
        m.gauge(
            "outbox_listener_connected",
            "1 while the LISTEN connection is up",
            lambda: float(self.listener is not None and self.listener.connected),
        )
