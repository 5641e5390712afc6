"""The sink supervisor: every active sink gets exactly one publisher, in
whichever ``outbox serve`` process takes its lock first.

Every :data:`CLAIM_INTERVAL` seconds the runner looks at the table on its
own connection (``sink_claimable``: the active sinks, their version, and
whether a session holds each one's advisory lock). For a sink nobody holds,
it opens a dedicated connection and tries the lock there
(``pg_try_advisory_lock``, session level); if it gets it, that connection
becomes the sink's worker's (relay/sinks/worker.py). So:

* one publisher per sink across all processes: the lock says so, and the
  worker's cursor compare-and-set catches the one statement two may overlap;
* a publisher that dies (kill -9, a lost network) releases the lock with
  its session, and another process starts one within about a claim
  interval (a vanished host: the server-side keepalives, ~11 s);
* unrelated to the webhook leader: sinks spread over the processes;
* a changed sink (PATCH: a new version) or a deactivated or deleted one
  has its worker stopped; a changed one starts again with its new settings.

Each worker is its own task with its own connections (database and broker),
and never raises out of the runner: a failing sink retries and shows it,
and never holds up the feed, the webhooks or another sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from outbox.relay.metrics import Metrics
from outbox.relay.reconnect import (
    CONNECTION_ERRORS,
    Reconnecting,
    backoff,
    close_quietly,
    connect,
    describe,
    nap,
)
from outbox.relay.sinks import open_publisher
from outbox.relay.sinks import store as db
from outbox.relay.sinks.base import SinkConfig
from outbox.relay.sinks.worker import PublisherFactory, SinkMoved, SinkWorker

log = logging.getLogger("outbox.relay.sinks")

CLAIM_INTERVAL = 1.0
# After a worker ended with an error, this process leaves the sink alone for
# backoff(failures) seconds (another process may take it meanwhile).
RESTART_BASE = 0.5


@dataclass
class _Running:
    worker: SinkWorker
    task: asyncio.Task[None]
    version: datetime | None


@dataclass
class _Failures:
    count: int = 0
    retry_at: float = 0.0
    last_error: str | None = None


class SinkRunner:
    """Supervises this process's sink workers (see the module docstring)."""

    def __init__(
        self,
        database_url: str,
        metrics: Metrics,
        *,
        instance: str,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        claim_interval: float = CLAIM_INTERVAL,
        retry_max: float = 5.0,
        publisher_factory: PublisherFactory | None = None,
    ) -> None:
        self.database_url = database_url
        self.metrics = metrics
        self.instance = instance
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.claim_interval = claim_interval
        self.retry_max = retry_max
        # Looked up at start time so that tests can swap the module's factory.
        self._factory = publisher_factory
        self.state = "starting"
        self.error: str | None = None
        self.workers: dict[int, _Running] = {}
        self._failures: dict[int, _Failures] = {}
        self._published: dict[str, float] = {}
        self._errors: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._tick = asyncio.Event()
        metrics.gauge(
            "outbox_sink_published_events",
            "Events this process published to each sink's broker (acknowledged)",
            lambda: {f"sink={k}": v for k, v in self._published.items()},
        )
        metrics.gauge(
            "outbox_sink_publish_failures",
            "Failed publish attempts of this process by sink (each retried)",
            lambda: {f"sink={k}": v for k, v in self._errors.items()},
        )
        metrics.gauge(
            "outbox_sink_publishing",
            "1 for each sink this process publishes, 0.5 while it retries",
            lambda: {
                f"sink={r.worker.config.name}": 0.5 if r.worker.state == "retrying" else 1.0
                for r in self.workers.values()
            },
        )
        metrics.gauge(
            "outbox_sink_lag_events",
            "Events committed after the cursor of each sink this process publishes",
            lambda: {
                f"sink={r.worker.config.name}": float(r.worker.lag.events if r.worker.lag else 0)
                for r in self.workers.values()
            },
        )

    # --- control -------------------------------------------------------------------

    def wake(self) -> None:
        """New events: every worker reads now (called by the relay's feed loop)."""
        for r in self.workers.values():
            r.worker.wake()

    def recheck(self) -> None:
        """Look at the table now (e.g. after the API changed a sink)."""
        self._tick.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._tick.set()
        for r in self.workers.values():
            r.worker.stop()

    # --- the supervisor loop -----------------------------------------------------------

    async def run(self) -> None:
        db = Reconnecting(
            self.database_url,
            f"outbox sinks {self.instance}",
            what="sinks",
            wake=self._stopping,
            logger=log,
        )
        try:
            while not self._stopping.is_set():
                try:
                    await self._round(await db.connection())
                    db.ok()
                    self.state, self.error = "ok", None
                    self._tick.clear()
                    await nap(self._tick, self.claim_interval)
                except CONNECTION_ERRORS as exc:
                    if self._stopping.is_set():
                        break
                    self.state, self.error = "reconnecting", describe(exc)
                    await db.failed(exc)
        finally:
            for r in self.workers.values():
                r.worker.stop()
            tasks = [r.task for r in self.workers.values()]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await db.close()
            self.state = "stopped"

    async def _round(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rows = await db.claimable(conn)
        active = {sink_id: (version, locked) for sink_id, version, locked in rows}
        for sink_id, r in list(self.workers.items()):
            if r.task.done():
                del self.workers[sink_id]
                continue
            if sink_id not in active or active[sink_id][0] != r.version:
                r.worker.stop()  # removed, paused or changed: its task ends soon
        now = time.monotonic()
        for sink_id, (_version, locked) in active.items():
            if self._stopping.is_set():
                return
            if sink_id in self.workers or locked:
                continue
            failure = self._failures.get(sink_id)
            if failure is not None and now < failure.retry_at:
                continue
            await self._try_start(sink_id)

    async def _try_start(self, sink_id: int) -> None:
        """Open a connection, take the sink's lock on it, start its worker."""
        conn = await connect(self.database_url, f"outbox sink {sink_id} {self.instance}")
        try:
            if not await db.try_lock(conn, sink_id):
                await close_quietly(conn)
                return
            loaded = await db.load(conn, sink_id)
            if loaded is None:  # deleted or paused meanwhile
                await close_quietly(conn)
                return
            config, cursor = loaded
            worker = SinkWorker(
                config,
                cursor,
                conn,
                owner=self.instance,
                batch_size=self.batch_size,
                poll_interval=self.poll_interval,
                retry_max=self.retry_max,
                publisher_factory=self._factory or open_publisher,
                on_published=self._count_published,
                on_error=self._count_error,
            )
        except BaseException:
            await close_quietly(conn)
            raise
        task = asyncio.create_task(self._supervise(worker), name=f"sink-{config.name}")
        self.workers[sink_id] = _Running(worker, task, config.version)

    async def _supervise(self, worker: SinkWorker) -> None:
        """Run one worker to its end; never raises (one sink never stops another)."""
        sink = worker.config
        error: str | None = None
        try:
            await worker.run()
            if worker.stopping:
                await db.release(worker.conn, sink.id, owner=self.instance)
        except SinkMoved as exc:
            log.info("%s; its publisher stops", exc)
        except CONNECTION_ERRORS as exc:
            error = f"database connection lost: {describe(exc)}"
        except psycopg.Error as exc:
            error = f"database error: {describe(exc)}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {describe(exc)}"
            log.exception("sink %s: publisher failed", sink.name)
        finally:
            await close_quietly(worker.conn)  # releases the lock
        failure = self._failures.setdefault(sink.id, _Failures())
        if error is None:
            failure.count = 0
            failure.retry_at = 0.0
        else:
            failure.count += 1
            failure.last_error = error
            failure.retry_at = time.monotonic() + backoff(failure.count, base=RESTART_BASE)
            log.warning("sink %s: publisher ended (%s); it restarts", sink.name, error)
        self._tick.set()

    def _count_published(self, sink: SinkConfig, n: int) -> None:
        self._published[sink.name] = self._published.get(sink.name, 0.0) + n

    def _count_error(self, sink: SinkConfig) -> None:
        self._errors[sink.name] = self._errors.get(sink.name, 0.0) + 1

    # --- status -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """This process's part: the supervisor and the sinks it publishes."""
        return {
            "state": self.state,
            "error": self.error,
            "publishing": [r.worker.status() for r in self.workers.values()],
        }


class WakingHub:
    """The hub as the relay's feed loop sees it, waking the sink workers too:
    a batch the feed read is news for every sink."""

    def __init__(self, hub: Any, runner: SinkRunner | None = None) -> None:
        self.hub = hub
        self.runner = runner

    def publish(self, batch: Any) -> None:
        self.hub.publish(batch)
        if self.runner is not None:
            self.runner.wake()
