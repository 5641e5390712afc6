"""The process's metrics, on prometheus-client, in one registry per service.

No global state: every :class:`Metrics` owns its own ``CollectorRegistry``
(the library's default registry is never used), so two services in one
process (tests) never mix their numbers. Components get the ``Metrics`` of
their service and

* count and time with the named instruments below (prometheus-client
  ``Counter`` and ``Histogram``),
* export what they already know as **callback gauges**: ``gauge(name, help,
  fn)`` registers ``fn``, called at every scrape (lag, queue depths,
  connection states), so nothing has to be kept up to date in between.

``GET /metrics`` (outbox.api.events) renders :meth:`render`. The names, and
what each means, are listed in docs/relay.md ("Metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as _Counter
from prometheus_client import Histogram as _Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

# The text format generate_latest writes (Prometheus 0.0.4 text exposition).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# A gauge callback returns one value, or values by label: {"status=pending": 3.0}.
GaugeValue = float | dict[str, float]


class Counter:
    """A counter in a service's registry; ``get`` reads it back (tests, /health)."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.labels = labels
        self._registry = registry
        self._counter = _Counter(name, help, labelnames=labels, registry=registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if self.labels:
            self._counter.labels(**labels).inc(amount)
        else:
            self._counter.inc(amount)

    def get(self, **labels: str) -> float:
        sample = self.name if self.name.endswith("_total") else self.name + "_total"
        value = self._registry.get_sample_value(sample, labels)
        return 0.0 if value is None else value


class Histogram:
    """A histogram in a service's registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help: str,
        buckets: tuple[float, ...] = _LAT_BUCKETS,
    ) -> None:
        self._histogram = _Histogram(name, help, buckets=buckets, registry=registry)

    def observe(self, value: float) -> None:
        self._histogram.observe(value)


class _Callbacks(Collector):
    """The callback gauges: each ``fn`` is called at scrape time."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Callable[[], GaugeValue]]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help, fn) in list(self.gauges.items()):
            value = fn()
            if isinstance(value, dict):
                # {"sink=orders": 3.0}: one label per gauge, named in the keys.
                items = [(*label.partition("=")[::2], float(v)) for label, v in value.items()]
                key = items[0][0] if items else ""
                family = GaugeMetricFamily(name, help, labels=[key] if key else [])
                for _, val, v in sorted(items):
                    family.add_metric([val] if key else [], v)
                yield family
            else:
                yield GaugeMetricFamily(name, help, value=float(value))


class Metrics:
    """One service's instruments and callback gauges (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_read = Counter(
            r, "outbox_events_read_total", "Events read from the outbox feed"
        )
        self.deliveries_created = Counter(
            r, "outbox_deliveries_created_total", "Delivery rows created by the dispatcher"
        )
        self.attempts = Counter(
            r,
            "outbox_delivery_attempts_total",
            "Webhook delivery attempts by outcome",
            labels=("outcome",),
        )
        self.attempt_latency = Histogram(
            r, "outbox_delivery_attempt_seconds", "Webhook attempt duration in seconds"
        )
        self.ws_messages = Counter(r, "outbox_ws_messages_total", "Event frames queued to clients")
        self.ws_dropped = Counter(
            r, "outbox_ws_clients_dropped_total", "WebSocket clients closed for falling behind"
        )
        self._callbacks = _Callbacks()
        r.register(self._callbacks)

    def gauge(self, name: str, help: str, fn: Callable[[], GaugeValue]) -> None:
        """Export ``fn()`` as gauge ``name`` at every scrape (registering again replaces it)."""
        self._callbacks.gauges[name] = (help, fn)

    def render(self) -> str:
        """The Prometheus text exposition of everything in this registry."""
        return generate_latest(self.registry).decode()
