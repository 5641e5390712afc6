"""A tiny Prometheus text-format registry (no dependency, no global state).

One :class:`Metrics` object per process lives on the app state; components
update it, ``GET /metrics`` renders it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, v in sorted(self.values.items()) or [((), 0.0)]:
            out.append(f"{self.name}{_labels(dict(key))} {v:g}")
        return out


class Gauge:
    """A gauge whose value is read from a callback at render time."""

    def __init__(self, name: str, help: str, fn: Callable[[], dict[str, float] | float]) -> None:
        self.name, self.help, self.fn = name, help, fn

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        value = self.fn()
        if isinstance(value, dict):
            for label, v in sorted(value.items()):
                k, _, val = label.partition("=")
                out.append(f"{self.name}{_labels({k: val})} {v:g}")
        else:
            out.append(f"{self.name} {value:g}")
        return out


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = _LAT_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{self.name}_bucket{{le="{b:g}"}} {acc}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {self.sum:g}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.events_read = Counter("outbox_events_read_total", "Events read from the outbox feed")
        self.deliveries_created = Counter(
            "outbox_deliveries_created_total", "Delivery rows created by the dispatcher"
        )
        self.attempts = Counter(
            "outbox_delivery_attempts_total", "Webhook delivery attempts by outcome"
        )
        self.attempt_latency = Histogram(
            "outbox_delivery_attempt_seconds", "Webhook attempt duration in seconds"
        )
        self.ws_messages = Counter("outbox_ws_messages_total", "Event frames queued to clients")
        self.ws_dropped = Counter(
            "outbox_ws_clients_dropped_total", "WebSocket clients closed for falling behind"
        )
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, fn: Callable[[], dict[str, float] | float]) -> None:
        self.gauges = [g for g in self.gauges if g.name != name]
        self.gauges.append(Gauge(name, help, fn))

    def render(self) -> str:
        lines: list[str] = []
        for m in (
            self.events_read,
            self.deliveries_created,
            self.attempts,
            self.attempt_latency,
            self.ws_messages,
            self.ws_dropped,
        ):
            lines += m.render()
        for g in self.gauges:
            lines += g.render()
        return "\n".join(lines) + "\n"
