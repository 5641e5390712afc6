"""The composition root: one Starlette app = REST API + /ws + relay + sender.

``outbox serve`` runs this app under uvicorn. The lifespan opens the pool,
starts the relay (so its feed cursor is known before the first request),
then runs the relay (feed reader, dispatcher when leader, retention), the
WebSocket hub and the webhook sender as named tasks in one TaskGroup.

Shutdown asks each component to stop, waits up to :data:`GRACE` seconds for
them to finish what they are doing (the current batch, an attempt in flight),
then cancels what is left. If one component dies, the others are cancelled,
``on_fatal`` is called (``outbox serve`` then stops uvicorn and exits
non-zero) and the error is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware

from outbox.api.config import Settings
from outbox.api.state import AppState
from outbox.relay.metrics import Metrics

log = logging.getLogger("outbox.app")

# Seconds the components get to finish their work at shutdown.
GRACE = 10.0


def create_app(
    settings: Settings, *, on_fatal: Callable[[BaseException], None] | None = None
) -> Starlette:
    from outbox.api import errors, events, health, openapi, pages, sinks, webhooks, whoami, ws
    from outbox.relay.delivery import DeliveryWorker
    from outbox.relay.hub import Hub
    from outbox.relay.runtime import Relay
    from outbox.relay.sinks.runner import SinkRunner, WakingHub

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics = Metrics()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database.url,
            min_size=2,
            max_size=10,
            open=False,
            kwargs={"autocommit": True, "application_name": "outbox api"},
            name="outbox-api",
            # After a server restart the pooled connections are dead; checking
            # on checkout turns that into a fresh connection, not a failed request.
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open(wait=False)
        hub = Hub(settings.hub, metrics)
        sender = DeliveryWorker(
            settings.delivery,
            metrics,
            database_url=settings.database.url,
            poll_interval=settings.feed.poll_interval,
        )
        # The feed loop hands each batch to the hub and wakes the sink workers.
        waking = WakingHub(hub)
        relay = Relay(settings, metrics, hub=waking, sender=sender)
        sink_runner = waking.runner = SinkRunner(
            settings.database.url,
            metrics,
            instance=relay.instance,
            batch_size=settings.feed.batch_size,
            poll_interval=settings.feed.poll_interval,
        )
        app.state.outbox = AppState(settings, pool, metrics, hub, relay, sender, sink_runner)
        try:
            await relay.start()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(relay.run(), name="relay"),
                    tg.create_task(sender.run(), name="sender"),
                    tg.create_task(hub.run(pool), name="hub"),
                    tg.create_task(sink_runner.run(), name="sinks"),
                ]
                yield
                await relay.stop()
                await sender.stop()
                await hub.stop()
                await sink_runner.stop()
                _, late = await asyncio.wait(tasks, timeout=GRACE)
                for t in late:
                    log.warning("%s did not stop within %ss; cancelling it", t.get_name(), GRACE)
                    t.cancel()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError | GeneratorExit):
                log.error("outbox serve: a component failed; stopping", exc_info=exc)
                if on_fatal is not None:
                    on_fatal(exc)
            raise
        finally:
            await pool.close()

    routes = [
        *health.routes,
        *webhooks.routes,
        *sinks.routes,
        *events.routes,
        *whoami.routes,
        *ws.routes,
        *pages.routes,
        *openapi.routes,
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(ws.RawSend), *errors.middleware(settings.api)],
        exception_handlers=errors.exception_handlers,
    )
