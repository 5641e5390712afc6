"""The relay's spans, and the trace context it hands on (CONTRACT "Trace context").

An event whose writer set a trace context (:mod:`outbox.tracing`: stored
``traceparent`` / ``tracestate``) is traced through the relay. Every span
below is a child of the writer's span (the stored traceparent is its
parent), so the writer's request, its commit and everything the relay did
for it are one trace:

* ``dispatch <event type>`` (INTERNAL): the dispatcher's statement that
  turned the event's batch into delivery rows (relay/dispatcher.py);
* ``POST`` (CLIENT): one per webhook attempt, retries included, with the
  HTTP semantic conventions (``http.request.method``, ``url.full`` without
  userinfo or query values, ``server.address``/``server.port``,
  ``http.response.status_code``, ``error.type``,
  ``http.request.resend_count``). The request's ``traceparent`` header is
  this span's context, so the receiver's own server span hangs below it;
* ``publish <subject template>`` (PRODUCER): one per sink message, from the
  first publish until the broker acknowledged it, retries included (each
  failure is an event on the span); the message's ``traceparent`` header
  is this span's context.

``tracestate`` travels with the traceparent wherever it was set.

Cost. An event without a trace context costs one ``is None`` test here:
no span, no header. Without an SDK ``TracerProvider`` (opentelemetry-api
alone, the default install: the API is a dependency, the SDK the ``otel``
extra) no span is made either; the headers carry the writer's traceparent
and tracestate exactly as stored. Measured in BENCHMARKS.md.

:func:`configure_tracing` installs the SDK from the standard ``OTEL_*``
variables at process start (``outbox serve``). An application that embeds
the relay and installs its own ``TracerProvider`` gets the relay's spans in
it, unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from outbox.errors import ConfigError

if TYPE_CHECKING:
    from outbox.relay.delivery.retry import AttemptResult
    from outbox.relay.feed import Event
    from outbox.relay.sinks.base import Message, SinkConfig

log = logging.getLogger("outbox.relay.tracing")

TRACER_NAME = "outbox.relay"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REDACTED = "REDACTED"

_propagator = TraceContextTextMapPropagator()
# What outbox.trace_context stores (sql/005_event_key_trace.sql): version 00.
_TRACEPARENT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# A ProxyTracer: it follows whichever TracerProvider is installed, now or later.
_global_tracer = trace.get_tracer(TRACER_NAME)
_override: Tracer | None = None


def _tracer() -> Tracer | None:
    """The tracer spans are made with, or None when no SDK provider is installed."""
    if _override is not None:
        return _override
    if isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider):
        return None
    return _global_tracer


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Make the relay's spans with ``provider`` instead of the global one (None:
    back to the global). For tests and for applications that keep a provider
    of their own rather than install one globally."""
    global _override
    _override = None if provider is None else provider.get_tracer(TRACER_NAME)


def writer_context(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The writer's span as a parent context, or None when there is no valid one.

    Built directly from the stored value (checked like ``outbox.trace_context``
    checks it at write time) rather than by the propagator's ``extract``, which
    costs several times more per span (BENCHMARKS.md, "Trace context").
    """
    if not traceparent or _TRACEPARENT_RE.fullmatch(traceparent) is None:
        return None
    span_context = SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
        trace_state=TraceState.from_header([tracestate]) if tracestate else None,
    )
    if not span_context.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def _inject(span: Span, headers: dict[str, str]) -> None:
    """``headers`` get ``span``'s traceparent (and tracestate, when it has one)."""
    headers.pop(TRACESTATE, None)
    _propagator.inject(headers, context=trace.set_span_in_context(span))


# --- URLs as span attributes -------------------------------------------------------

_MAX_URLS = 10_000
_url_attrs: dict[str, dict[str, Any]] = {}


def safe_url(url: str) -> str:
    """``url`` as ``url.full`` may show it: userinfo replaced by
    ``REDACTED:REDACTED``, every query value by ``REDACTED`` (webhook URLs
    often carry a token there), no fragment. The path is kept: it is what
    the API shows for the webhook."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"{REDACTED}:{REDACTED}@{netloc}"
    query = "&".join(
        f"{p.partition('=')[0]}={REDACTED}" if "=" in p else p for p in parts.query.split("&") if p
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _server(url: str, default_ports: Mapping[str, int]) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    attrs: dict[str, Any] = {}
    if host:
        attrs["server.address"] = host
    port = port or default_ports.get(parts.scheme)
    if port:
        attrs["server.port"] = port
    return attrs


_HTTP_PORTS = {"http": 80, "https": 443}
_BROKER_PORTS = {"nats": 4222, "tls": 4222, "amqp": 5672, "amqps": 5671}


def _webhook_url_attrs(url: str) -> dict[str, Any]:
    attrs = _url_attrs.get(url)
    if attrs is None:
        if len(_url_attrs) >= _MAX_URLS:
            _url_attrs.clear()
        attrs = _url_attrs[url] = {"url.full": safe_url(url), **_server(url, _HTTP_PORTS)}
    return attrs


# --- dispatch -------------------------------------------------------------------------


def dispatched(events: Iterable[Event], start_ns: int, created: int) -> None:
    """A ``dispatch`` span for every traced event of a batch that was just
    dispatched (from ``start_ns`` until now), child of its writer's span."""
    tracer = _tracer()
    if tracer is None:
        return
    end_ns = time.time_ns()
    batch: list[Event] = list(events)
    for e in batch:
        if e.traceparent is None:
            continue
        ctx = writer_context(e.traceparent, e.tracestate)
        if ctx is None:
            continue
        span = tracer.start_span(
            f"dispatch {e.type}",
            context=ctx,
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            attributes={
                "outbox.event.id": e.id,
                "outbox.event.type": e.type,
                "outbox.dispatch.batch_size": len(batch),
                "outbox.dispatch.deliveries_created": created,
            },
        )
        span.end(end_time=end_ns)


# --- webhook attempts ---------------------------------------------------------------


def start_attempt(
    headers: dict[str, str],
    traceparent: str | None,
    tracestate: str | None,
    *,
    url: str,
    attempt: int,
    delivery_id: int,
    webhook_id: int,
    event_id: int,
    event_type: str,
) -> Span | None:
    """Before a webhook POST: its trace headers, and its span (None: no span).

    With a tracer, the span is a CLIENT child of the writer's span and the
    headers carry its context; without one, the headers carry the writer's
    context as stored. An event without a trace context gets neither.
    """
    if traceparent is None:
        return None
    tracer = _tracer()
    ctx = writer_context(traceparent, tracestate) if tracer is not None else None
    if tracer is None or ctx is None:
        headers[TRACEPARENT] = traceparent
        if tracestate:
            headers[TRACESTATE] = tracestate
        return None
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        **_webhook_url_attrs(url),
        "outbox.delivery.id": delivery_id,
        "outbox.delivery.attempt": attempt,
        "outbox.webhook.id": webhook_id,
        "outbox.event.id": event_id,
        "outbox.event.type": event_type,
    }
    if attempt > 1:
        attributes["http.request.resend_count"] = attempt - 1
    span = tracer.start_span("POST", context=ctx, kind=SpanKind.CLIENT, attributes=attributes)
    _inject(span, headers)
    return span


def end_attempt(span: Span, result: AttemptResult | None) -> None:
    """After the POST: its outcome on the span, then the span ends.

    A non-2xx status is an error here (the delivery failed), with
    ``error.type`` the status code; a failure without a response has the
    failure's class (``Timeout``, ``ConnectError``, ``UnsafeURL``, ...).
    ``result`` None: the attempt was cancelled (shutdown).
    """
    if result is None:
        span.set_attribute("error.type", "Cancelled")
        span.set_status(Status(StatusCode.ERROR, "cancelled (the relay is stopping)"))
    else:
        if result.status is not None:
            span.set_attribute("http.response.status_code", result.status)
        if not result.ok:
            error = result.error_class or (str(result.status) if result.status else "Error")
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, result.error_message or error))
    span.end()


# --- sink messages --------------------------------------------------------------------

_MESSAGING_SYSTEM = {"nats": "nats", "amqp": "rabbitmq"}


def start_publish(sink: SinkConfig, messages: Sequence[Message]) -> list[Span]:
    """A PRODUCER span for every traced message of a batch about to be
    published; each message's trace headers become its span's context.
    Without a tracer (or a traced message) nothing is done: the headers keep
    the writer's traceparent and tracestate as stored."""
    tracer = _tracer()
    if tracer is None:
        return []
    spans: list[Span] = []
    common: dict[str, Any] | None = None
    for m in messages:
        traceparent = m.headers.get(TRACEPARENT)
        if traceparent is None:
            continue
        ctx = writer_context(traceparent, m.headers.get(TRACESTATE))
        if ctx is None:
            continue
        if common is None:
            common = {
                "messaging.system": _MESSAGING_SYSTEM.get(sink.kind, sink.kind),
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.template": sink.destination_template,
                "outbox.sink.id": sink.id,
                "outbox.sink.name": sink.name,
                **_server(sink.url, _BROKER_PORTS),
            }
            if sink.kind == "amqp":
                common["messaging.destination.name"] = sink.exchange or "amq.topic"
        attributes = {
            **common,
            "messaging.message.id": m.msg_id,
            "outbox.event.id": m.event_id,
            "outbox.event.type": m.headers.get("Outbox-Event-Type", ""),
        }
        if sink.kind == "amqp":
            attributes["messaging.rabbitmq.destination.routing_key"] = m.destination
        else:
            attributes["messaging.destination.name"] = m.destination
        span = tracer.start_span(
            f"publish {sink.destination_template}",
            context=ctx,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )
        _inject(span, m.headers)
        spans.append(span)
    return spans


def publish_failed(spans: Sequence[Span], error: str) -> None:
    """A failed publish of the batch (it is retried): an event on each span."""
    for span in spans:
        span.add_event("publish failed", {"error.type": "BrokerError", "exception.message": error})


def end_publish(spans: Sequence[Span], error: BaseException | None = None) -> None:
    """The batch was acknowledged (``error`` None), or given up for now."""
    for span in spans:
        if error is not None:
            name = type(error).__name__.lstrip("_")
            span.set_attribute("error.type", name)
            span.set_status(Status(StatusCode.ERROR, str(error) or name))
        span.end()


# --- process start: the SDK from the standard OTEL_* variables ------------------------

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    """``OTEL_TRACES_EXPORTER`` (comma-separated; ``none``: nothing), or
    ``otlp`` when only an OTLP endpoint is set, or nothing at all."""
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        return ["otlp"] if any(env.get(v, "").strip() for v in _ENDPOINT_VARS) else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return [] if names == ["none"] else [n for n in names if n != "none"]


def _protocol(env: Mapping[str, str]) -> tuple[str, str]:
    for var in _PROTOCOL_VARS:
        value = env.get(var, "").strip()
        if value:
            return var, value
    return _PROTOCOL_VARS[1], "http/protobuf"


def _check_endpoints(env: Mapping[str, str]) -> None:
    for var in _ENDPOINT_VARS:
        value = env.get(var, "").strip()
        if not value:
            continue
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{var}: {safe_url(value)!r} is not an http:// or https:// URL")


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    """The span exporter ``OTEL_TRACES_EXPORTER`` names, built from its own variables."""
    if name in ("otlp", "otlp_proto_http", "otlp_proto_grpc"):
        var, protocol = _protocol(env)
        if name == "otlp_proto_http":
            protocol = "http/protobuf"
        elif name == "otlp_proto_grpc":
            protocol = "grpc"
        if protocol == "http/protobuf":
            _check_endpoints(env)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        if protocol == "grpc":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                    OTLPSpanExporter as GrpcExporter,
                )
            except ImportError:
                raise ConfigError(
                    f"{var}: grpc needs opentelemetry-exporter-otlp-proto-grpc installed "
                    "(the otel extra exports over http/protobuf)"
                ) from None
            return GrpcExporter()
        raise ConfigError(f"{var}: unsupported protocol {protocol!r} (use http/protobuf or grpc)")
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from importlib.metadata import entry_points

    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} "
            "(use otlp, console or none, or install a package that provides it)"
        )
    return next(iter(found)).load()()


def _describe(name: str, env: Mapping[str, str]) -> str:
    if name == "console":
        return "console (standard output)"
    if name.startswith("otlp"):
        endpoint = env.get(_ENDPOINT_VARS[0], "").strip()
        if not endpoint:
            base = env.get(_ENDPOINT_VARS[1], "").strip() or "http://localhost:4318"
            endpoint = base.rstrip("/") + "/v1/traces"
        return f"{name} ({_protocol(env)[1]}) to {safe_url(endpoint)}"
    return name


def configure_tracing() -> Callable[[], None] | None:
    """Install the OpenTelemetry SDK as the global TracerProvider, configured by
    the standard ``OTEL_*`` variables only; return its shutdown (flushes the
    spans still queued), or None when nothing was installed.

    Nothing is installed when ``OTEL_SDK_DISABLED=true``, when no exporter is
    asked for (``OTEL_TRACES_EXPORTER`` unset or ``none`` and no
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``: installing the extra alone
    exports nothing), when a TracerProvider is already installed (an
    application embedding the relay, ``opentelemetry-instrument``: its
    provider gets the spans), or when the SDK is not installed (a warning
    says which extra to install). The SDK reads everything else itself:
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (service name
    ``outbox-relay`` when neither sets one), ``OTEL_TRACES_SAMPLER[_ARG]``,
    ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*`` (headers, timeout,
    compression, certificates). A bad exporter name, protocol or endpoint
    raises :class:`ConfigError` naming the variable.
    """
    env = os.environ  # the SDK reads it too: one source for every OTEL_* setting
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = _exporter_names(env)
    if not names:
        return None
    if not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        log.info("tracing: a TracerProvider is installed already; the relay's spans go to it")
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing: OTEL_TRACES_EXPORTER or an OTLP endpoint is set, but the OpenTelemetry "
            "SDK is not installed: no spans are exported (pip install 'outbox-relay[otel]')"
        )
        return None
    exporters = [_exporter(name, env) for name in names]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "outbox-relay"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info(
        "tracing: exporting spans as %s with %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(_describe(n, env) for n in names),
    )
    return provider.shutdown
