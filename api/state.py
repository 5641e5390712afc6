"""What every request handler can reach: ``request.app.state.outbox``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from outbox.api.config import Settings
from outbox.relay.metrics import Metrics

if TYPE_CHECKING:
    from outbox.relay.delivery import DeliveryWorker
    from outbox.relay.hub import Hub
    from outbox.relay.runtime import Relay
    from outbox.relay.sinks.runner import SinkRunner


@dataclass
class AppState:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    metrics: Metrics
    hub: Hub
    relay: Relay
    sender: DeliveryWorker
    sinks: SinkRunner
