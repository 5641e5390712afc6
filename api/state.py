"""What every request handler can reach: ``request.app.state.outbox``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from outbox.api.config import Settings

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from outbox.relay.delivery.worker import DeliveryWorker
    from outbox.relay.hub import Hub
    from outbox.relay.metrics import Metrics
    from outbox.relay.service import Service
    from outbox.relay.sinks.runner import SinkRunner


@dataclass
class DatabaseScrape:
    """What the last ``GET /metrics`` read from the database (api/events.py)."""

    deliveries: dict[str, int] = field(default_factory=dict)
    due: int = 0
    waiting: int = 0
    degraded: dict[str, float] = field(default_factory=dict)


@dataclass
class AppState:
    """The settings and the service (relay/service.py), which owns everything else."""

    settings: Settings
    service: Service
    scrape: DatabaseScrape = field(default_factory=DatabaseScrape)

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self.service.pool

    @property
    def metrics(self) -> Metrics:
        return self.service.metrics

    @property
    def hub(self) -> Hub:
        hub: Hub = self.service.hub
        return hub

    @property
    def sender(self) -> DeliveryWorker:
        sender: DeliveryWorker = self.service.sender
        return sender

    @property
    def sinks(self) -> SinkRunner:
        return self.service.sinks
