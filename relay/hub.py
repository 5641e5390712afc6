"""Placeholder WebSocket hub (replaced by the WebSocket issue)."""

from __future__ import annotations

from typing import Any

from outbox.config import Settings
from relay.feed import Batch
from relay.metrics import Metrics


class Hub:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.batches = 0

    def publish(self, batch: Batch) -> None:
        """Called by the relay's feed loop for every batch; must never block."""
        self.batches += 1

    async def run(self, pool: Any) -> None:
        return None

    async def stop(self) -> None:
        return None
