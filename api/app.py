"""The composition root: one Starlette app = REST API + /ws + relay + sender.

``outbox serve`` runs this app under uvicorn. The lifespan opens the pool,
then runs the relay (feed reader, dispatcher when leader, retention), the
WebSocket hub and the webhook sender as named tasks in one TaskGroup: if one
dies, all stop, and the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from api.state import AppState
from outbox.config import Settings
from relay.metrics import Metrics


def create_app(settings: Settings) -> Starlette:
    from api import errors, events, health, openapi, pages, webhooks, ws
    from relay.delivery import DeliveryWorker
    from relay.hub import Hub
    from relay.runtime import Relay

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics = Metrics()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url, min_size=2, max_size=10, open=False,
            kwargs={"autocommit": True}, name="outbox-api",
        )
        await pool.open(wait=False)
        hub = Hub(settings, metrics)
        sender = DeliveryWorker(settings, metrics)
        relay = Relay(settings, metrics, hub=hub, sender=sender)
        app.state.outbox = AppState(settings, pool, metrics, hub, relay, sender)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(relay.run(), name="relay"),
                    tg.create_task(sender.run(), name="sender"),
                    tg.create_task(hub.run(pool), name="hub"),
                ]
                yield
                await relay.stop()
                await sender.stop()
                await hub.stop()
                for t in tasks:
                    t.cancel()
        finally:
            await pool.close()

    routes = [
        *health.routes,
        *webhooks.routes,
        *events.routes,
        *ws.routes,
        *pages.routes,
        *openapi.routes,
    ]
    return Starlette(
        routes=routes, lifespan=lifespan,
        middleware=errors.middleware(settings), exception_handlers=errors.exception_handlers,
    )
