"""Placeholder relay runtime: LISTEN + poll, feed batches to the hub.

Replaced by the relay issue (listener with reconnect, dispatcher, leader
election, retention, health).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg

from outbox.config import Settings
from outbox.cursor import Cursor
from relay.delivery import DeliveryWorker
from relay.feed import head, read_batch
from relay.hub import Hub
from relay.metrics import Metrics


class Relay:
    def __init__(
        self, settings: Settings, metrics: Metrics, *, hub: Hub, sender: DeliveryWorker
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.sender = sender
        self.cursor: Cursor | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True
        )
        listen: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
            self.settings.database_url, autocommit=True
        )
        try:
            await listen.execute("LISTEN outbox_events")
            self.cursor = await head(conn)
            gen = listen.notifies(timeout=self.settings.poll_interval)
            while not self._stopping.is_set():
                while True:
                    batch = await read_batch(conn, self.cursor, self.settings.batch_size)
                    self.cursor = batch.end
                    if not batch.events:
                        break
                    self.metrics.events_read.inc(len(batch.events))
                    self.hub.publish(batch)
                with contextlib.suppress(StopAsyncIteration):
                    async for _ in gen:
                        break
                gen = listen.notifies(timeout=self.settings.poll_interval)
        finally:
            await conn.close()
            await listen.close()

    async def stop(self) -> None:
        self._stopping.set()

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}
