"""outbox.relay.tracing without a database: the trace headers the relay sends,
its spans (SDK in-memory exporter), url.full redaction, and the OTEL_*
configuration's errors. The whole path is in tests/e2e/test_trace_context.py."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from outbox.errors import ConfigError
from outbox.events import Matcher
from outbox.relay import tracing
from outbox.relay.delivery.retry import AttemptResult
from outbox.relay.feed import Event
from outbox.relay.sinks.base import SinkConfig, Template, build_messages
from tests.support.paths import ROOT
from tests.support.tracing import TP, Spans, parse_traceparent, relay_spans

WRITER_TRACE = int(TP.split("-")[1], 16)
WRITER_SPAN = int(TP.split("-")[2], 16)
URL = "https://user:pw@hooks.example.com:8443/in/abc?token=s3cr3t&x=1#frag"


@pytest.fixture
def spans() -> Any:
    with relay_spans() as s:
        yield s


def attempt_headers(tp: str | None, ts: str | None = None, attempt: int = 1) -> tuple[Any, dict]:
    headers: dict[str, str] = {"webhook-id": "evt_7"}
    span = tracing.start_attempt(
        headers,
        tp,
        ts,
        url=URL,
        attempt=attempt,
        delivery_id=3,
        webhook_id=2,
        event_id=7,
        event_type="order.placed",
    )
    return span, headers


def result(status: int | None = 200, **kw: Any) -> AttemptResult:
    return AttemptResult(attempt=1, started_at=0.0, duration=0.01, status=status, **kw)


# --- without an SDK provider: the writer's context as stored ------------------------


def test_without_a_provider_the_stored_context_is_sent_as_is() -> None:
    span, headers = attempt_headers(TP, "vendor=x")
    assert span is None
    assert headers["traceparent"] == TP and headers["tracestate"] == "vendor=x"
    span, headers = attempt_headers(TP)
    assert "tracestate" not in headers
    span, headers = attempt_headers(None, "vendor=x")  # traceless: nothing at all
    assert span is None and headers == {"webhook-id": "evt_7"}


def test_without_a_provider_no_span_anywhere(spans: Spans) -> None:
    tracing.use_tracer_provider(None)  # the fixture's provider off again: API only
    tracing.dispatched([event(TP)], 0, 1)
    assert tracing.start_publish(sink(), build_messages([event(TP)], Matcher(["*"]), tmpl())) == []
    assert spans.finished() == []


# --- webhook attempts -------------------------------------------------------------


def test_attempt_span_is_the_writers_child_and_the_header_its_context(spans: Spans) -> None:
    span, headers = attempt_headers(TP, "vendor=x")
    assert span is not None
    tracing.end_attempt(span, result(200))
    (s,) = spans.finished()
    trace_id, parent, flags = parse_traceparent(headers["traceparent"])
    assert int(trace_id, 16) == WRITER_TRACE == s.context.trace_id
    assert s.parent is not None and s.parent.span_id == WRITER_SPAN
    assert int(parent, 16) == s.context.span_id != WRITER_SPAN  # the relay's span is the parent
    assert flags == "01" and headers["tracestate"] == "vendor=x"
    assert s.name == "POST" and s.kind == SpanKind.CLIENT
    assert s.status.status_code == StatusCode.UNSET
    a = s.attributes
    assert a["http.request.method"] == "POST"
    assert a["http.response.status_code"] == 200
    assert (
        a["url.full"]
        == "https://REDACTED:REDACTED@hooks.example.com:8443/in/abc?token=REDACTED&x=REDACTED"
    )
    assert (a["server.address"], a["server.port"]) == ("hooks.example.com", 8443)
    assert (a["outbox.event.id"], a["outbox.delivery.id"], a["outbox.webhook.id"]) == (7, 3, 2)
    assert "http.request.resend_count" not in a and "error.type" not in a
    assert "s3cr3t" not in str(dict(a)) and "pw" not in a["url.full"]


def test_failed_attempts_are_errors_with_their_type(spans: Spans) -> None:
    span, _ = attempt_headers(TP, attempt=2)
    assert span is not None
    tracing.end_attempt(span, result(500, error_message="HTTP 500"))
    span, _ = attempt_headers(TP, attempt=3)
    assert span is not None
    tracing.end_attempt(
        span, result(None, error_class="ConnectError", error_message="connection refused")
    )
    span, _ = attempt_headers(TP, attempt=4)
    assert span is not None
    tracing.end_attempt(span, None)  # cancelled at shutdown
    http500, refused, cancelled = spans.finished()
    assert http500.attributes["error.type"] == "500"
    assert http500.attributes["http.request.resend_count"] == 1
    assert http500.status.status_code == StatusCode.ERROR
    assert refused.attributes["error.type"] == "ConnectError"
    assert "http.response.status_code" not in refused.attributes
    assert refused.status.description == "connection refused"
    assert cancelled.attributes["error.type"] == "Cancelled"
    # Every attempt of the delivery is in the writer's trace, each its own span.
    assert {s.context.trace_id for s in spans.finished()} == {WRITER_TRACE}
    assert len({s.context.span_id for s in spans.finished()}) == 3


def test_an_unsampled_writer_gets_no_recorded_span_but_the_header_carries_on(
    spans: Spans,
) -> None:
    unsampled = TP[:-2] + "00"
    span, headers = attempt_headers(unsampled)
    assert span is not None
    tracing.end_attempt(span, result(200))
    assert spans.finished() == []  # the SDK's default sampler follows the parent
    trace_id, _, flags = parse_traceparent(headers["traceparent"])
    assert int(trace_id, 16) == WRITER_TRACE and flags == "00"


def test_safe_url() -> None:
    assert tracing.safe_url("http://h/p") == "http://h/p"
    assert tracing.safe_url("http://[::1]:81/p?a") == "http://[::1]:81/p?a"
    assert tracing.safe_url("https://tok@h/p?sig=1&&b=") == (
        "https://REDACTED:REDACTED@h/p?sig=REDACTED&b=REDACTED"
    )
    assert tracing.safe_url("http://h:99999/") == "REDACTED"


# --- dispatch and sinks -----------------------------------------------------------


def event(tp: str | None, ts: str | None = None, id: int = 7) -> Event:
    return Event(
        id, 1, "order.placed", '{"n":1}', datetime(2024, 1, 1, tzinfo=UTC), "", None, tp, ts
    )


def sink(kind: str = "nats") -> SinkConfig:
    url = "nats://user:pw@broker:4222" if kind == "nats" else "amqp://guest:pw@rabbit/"
    return SinkConfig(1, "orders", kind, url, ("*",), subject="outbox.{type}", routing_key="{type}")


def tmpl() -> Template:
    return Template("outbox.{type}")


def test_dispatch_spans_only_for_traced_events(spans: Spans) -> None:
    tracing.dispatched([event(TP, id=1), event(None, id=2), event("bad", id=3)], 1_000, 2)
    (s,) = spans.finished()
    assert s.name == "dispatch order.placed" and s.kind == SpanKind.INTERNAL
    assert s.parent is not None and s.parent.span_id == WRITER_SPAN
    assert s.context.trace_id == WRITER_TRACE and s.start_time == 1_000
    assert s.attributes["outbox.event.id"] == 1
    assert s.attributes["outbox.dispatch.batch_size"] == 3


@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_sink_message_headers_are_the_publish_spans_context(spans: Spans, kind: str) -> None:
    events = [event(TP, "vendor=x", id=1), event(None, id=2)]
    messages = build_messages(events, Matcher(["*"]), tmpl())
    assert messages[0].headers["traceparent"] == TP  # as stored, until a span takes it
    assert messages[0].headers["tracestate"] == "vendor=x"
    opened = tracing.start_publish(sink(kind), messages)
    assert len(opened) == 1
    tracing.publish_failed(opened, "broker down")
    tracing.end_publish(opened)
    (s,) = spans.finished()
    trace_id, parent, _ = parse_traceparent(messages[0].headers["traceparent"])
    assert int(trace_id, 16) == WRITER_TRACE and int(parent, 16) == s.context.span_id
    assert messages[0].headers["tracestate"] == "vendor=x"
    assert "traceparent" not in messages[1].headers
    assert s.kind == SpanKind.PRODUCER
    assert s.name == ("publish outbox.{type}" if kind == "nats" else "publish {type}")
    assert s.parent is not None and s.parent.span_id == WRITER_SPAN
    a = s.attributes
    assert a["messaging.system"] == ("nats" if kind == "nats" else "rabbitmq")
    assert a["messaging.message.id"] == "evt_1"
    assert a["server.address"] == ("broker" if kind == "nats" else "rabbit")
    assert "pw" not in str(dict(a))
    assert [e.name for e in s.events] == ["publish failed"]


def test_unacknowledged_publish_is_an_error(spans: Spans) -> None:
    messages = build_messages([event(TP)], Matcher(["*"]), tmpl())
    opened = tracing.start_publish(sink(), messages)
    tracing.end_publish(opened, TimeoutError("no ack"))
    (s,) = spans.finished()
    assert s.status.status_code == StatusCode.ERROR
    assert s.attributes["error.type"] == "TimeoutError"


# --- configuration: the standard OTEL_* variables ----------------------------------


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": " "}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
    ],
)
def test_which_exporters(env: dict[str, str], names: list[str]) -> None:
    assert tracing._exporter_names(env) == names


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin-ish"}, "OTEL_TRACES_EXPORTER: unknown exporter"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol 'http/json'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: grpc needs",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' is not an http",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://u:secret@c/"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://REDACTED:REDACTED@c/'",
        ),
    ],
)
def test_bad_variables_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for var in (*tracing._ENDPOINT_VARS, *tracing._PROTOCOL_VARS, "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as info:
        tracing.configure_tracing()
    assert "secret" not in str(info.value)


def test_nothing_is_installed_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*tracing._ENDPOINT_VARS, "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(var, raising=False)
    assert tracing.configure_tracing() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_tracing() is None
    assert tracing._tracer() is None  # still the API's no-op provider


def test_configure_tracing_installs_the_sdk_from_the_environment() -> None:
    """In a fresh interpreter: the global provider can be installed once per process."""
    code = (
        "from opentelemetry import trace\n"
        "from outbox.relay import tracing\n"
        "stop = tracing.configure_tracing()\n"
        "p = trace.get_tracer_provider()\n"
        "name = p.resource.attributes['service.name']\n"
        "print(type(p).__name__, name, tracing._tracer() is not None)\n"
        "stop()\n"
    )
    env = {"OTEL_TRACES_EXPORTER": "console", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TracerProvider", "outbox-relay", "True"]
    env["OTEL_SERVICE_NAME"] = "billing-relay"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split()[1] == "billing-relay", out.stderr


def test_without_the_sdk_installed_an_exporter_variable_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    for name in ("opentelemetry.sdk.trace", "opentelemetry.sdk.resources"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails: as if not installed
    with caplog.at_level("WARNING", "outbox.relay.tracing"):
        assert tracing.configure_tracing() is None
    assert "pip install 'outbox-relay[otel]'" in caplog.text
    assert tracing._tracer() is None
