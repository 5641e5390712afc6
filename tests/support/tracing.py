"""W3C traceparent values for the key and trace-context tests (good ones and bad
ones), and the relay's spans in memory (an OpenTelemetry SDK provider)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TP2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BAD = [
    "garbage",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
]


# --- relay spans (relay/tracing.py) -------------------------------------------------
# They import the OpenTelemetry SDK (dev extra).


def parse_traceparent(value: str) -> tuple[str, str, str]:
    """(trace id, parent span id, flags) of a W3C traceparent header."""
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, value
    return trace_id, span_id, flags


@dataclass
class Spans:
    """The relay's spans in memory, and a tracer for the test's own (writer) spans."""

    exporter: Any
    provider: Any

    @property
    def tracer(self) -> Any:
        return self.provider.get_tracer("tests.writer")

    def finished(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[Any]:
        return [s for s in self.finished() if s.name.startswith(prefix)]

    def of_trace(self, trace_id: int) -> list[Any]:
        return [s for s in self.finished() if s.context.trace_id == trace_id]


@contextlib.contextmanager
def relay_spans() -> Iterator[Spans]:
    """An SDK TracerProvider with an in-memory exporter, made the relay's
    (``outbox.relay.tracing.use_tracer_provider``) for the duration; the
    process-wide OpenTelemetry provider is not touched."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from outbox.relay import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield Spans(exporter, provider)
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()
