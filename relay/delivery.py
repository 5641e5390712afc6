"""Placeholder webhook sender (replaced by the webhook delivery issue)."""

from __future__ import annotations

import asyncio

from outbox.config import Settings
from relay.metrics import Metrics


class DeliveryWorker:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        """New deliveries exist (called by the dispatcher or on NOTIFY)."""
        self._wake.set()

    async def run(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
