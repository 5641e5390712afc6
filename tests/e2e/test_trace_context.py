"""One trace from the writer's commit to every delivery (issue 19).

The writer's span is current while it commits (``set_trace_context``, or
``SET LOCAL outbox.traceparent`` from any language); the relay's dispatch
span, every webhook attempt (a failure, then the retry that succeeds) and
every sink message are its children, and what the receiver and the broker
get in ``traceparent`` is the relay's span. Spans are read from the SDK's
in-memory exporter (the whole app in-process) and, as a collector sees
them, from a loopback OTLP/HTTP receiver (``outbox serve`` as a subprocess
configured by OTEL_* variables only).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from outbox.api.config import Settings
from outbox.publish import apublish
from outbox.relay.config import parse_schedule
from outbox.tracing import set_trace_context
from tests.support.api import AUTH
from tests.support.otlp import otlp_receiver
from tests.support.receivers import Receiver, Reply, running
from tests.support.relay import ServeProcess, serve_processes
from tests.support.servers import serve_app
from tests.support.sinks import (
    AMQP_URL,
    NATS_URL,
    amqp_queue,
    delete_stream,
    need_amqp,
    need_nats,
    stream_contents,
    unique,
)
from tests.support.tracing import BAD, TP2, Spans, parse_traceparent, relay_spans
from tests.support.waiting import wait_for


@pytest.fixture
def spans() -> Iterator[Spans]:
    with relay_spans() as s:
        yield s


def fast(settings: Settings) -> Settings:
    return settings.replace(retry_schedule=parse_schedule("100ms,100ms,100ms"))


def to(rx: Receiver, event_id: int) -> list[Any]:
    return [r for r in rx.requests if r.headers.get("webhook-id") == f"evt_{event_id}"]


async def hook(api: httpx.AsyncClient, url: str, event_type: str = "order.*") -> dict[str, Any]:
    r = await api.post("/webhooks", json={"name": "crm", "url": url, "event_type": event_type})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_one_trace_from_the_request_through_a_failed_attempt_to_the_retry(
    settings: Settings, aconn: psycopg.AsyncConnection[Any], spans: Spans
) -> None:
    async with (
        running() as rx,
        serve_app(fast(settings)) as app,
        httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=10) as api,
    ):
        rx.script(Reply(500), then=Reply(200))
        await hook(api, rx.url)
        # The application: its request span is current while it writes and commits.
        with spans.tracer.start_as_current_span("POST /orders") as request:
            async with aconn.transaction():
                assert await set_trace_context(aconn) is not None
                event_id = await apublish(aconn, "order.placed", {"order": 1})
        writer = request.get_span_context()
        await wait_for(lambda: len(to(rx, event_id)) == 2, timeout=20, what="500, then 200")

        def attempts_done() -> list[Any]:
            done = [
                s
                for s in spans.finished()
                if s.name == "POST" and s.attributes["outbox.event.id"] == event_id
            ]
            return done if len(done) == 2 else []

        first, second = sorted(
            await wait_for(attempts_done, timeout=10, what="two attempt spans"),
            key=lambda s: s.attributes["outbox.delivery.attempt"],
        )
        (dispatch,) = [s for s in spans.named("dispatch") if s.context.trace_id == writer.trace_id]
        for span in (dispatch, first, second):
            assert span.context.trace_id == writer.trace_id
            assert span.parent is not None and span.parent.span_id == writer.span_id
        assert dispatch.name == "dispatch order.placed"
        assert first.attributes["http.response.status_code"] == 500
        assert first.attributes["error.type"] == "500"
        assert second.attributes["http.response.status_code"] == 200
        assert second.attributes["http.request.resend_count"] == 1
        assert second.attributes["url.full"] == rx.url
        # What each request carried: the writer's trace, the attempt's own span as parent.
        for request_seen, span in zip(to(rx, event_id), (first, second), strict=True):
            trace_id, parent, flags = parse_traceparent(request_seen.headers["traceparent"])
            assert int(trace_id, 16) == writer.trace_id
            assert int(parent, 16) == span.context.span_id
            assert int(flags, 16) & 1  # sampled, as the writer's (03: W3C level 2 "random")
        # The attempt rows show the header as sent (the console's inspector).
        r = await api.get("/webhooks")
        (webhook,) = r.json()["items"]
        items = (await api.get(f"/webhooks/{webhook['id']}/deliveries")).json()["items"]
        att = await api.get(f"/webhooks/{webhook['id']}/deliveries/{items[0]['id']}/attempts")
        sent = [a["request_headers"].get("traceparent") for a in att.json()["items"]]
        assert [int(parse_traceparent(s)[1], 16) for s in sent] == [
            first.context.span_id,
            second.context.span_id,
        ]


async def test_traceless_and_malformed_writes_deliver_without_trace_headers(
    settings: Settings, aconn: psycopg.AsyncConnection[Any], spans: Spans
) -> None:
    async with (
        running() as rx,
        serve_app(fast(settings)) as app,
        httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=10) as api,
    ):
        await hook(api, rx.url)
        ids = []
        async with aconn.transaction():  # no trace context at all
            ids.append(await apublish(aconn, "order.placed", {"n": 0}))
        for bad in BAD:  # a malformed value never breaks the write
            async with aconn.transaction():
                await aconn.execute("SELECT set_config('outbox.traceparent', %s, true)", (bad,))
                await aconn.execute("SET LOCAL outbox.tracestate = 'vendor=x'")
                ids.append(await apublish(aconn, "order.placed", {"bad": bad}))
        await wait_for(lambda: all(to(rx, i) for i in ids), timeout=20, what="every delivery")
        for i in ids:
            (req,) = to(rx, i)
            assert "traceparent" not in req.headers and "tracestate" not in req.headers
        assert spans.finished() == []  # no trace context: no span, not even a root one


async def test_sink_messages_carry_the_publish_span_as_parent(
    settings: Settings, aconn: psycopg.AsyncConnection[Any], spans: Spans
) -> None:
    need_nats()
    stream, prefix = unique("TR_"), unique("tr")
    try:
        async with (
            serve_app(settings) as app,
            httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=10) as api,
        ):
            r = await api.post(
                "/sinks",
                json={
                    "name": "js",
                    "url": NATS_URL,
                    "event_types": ["order.*"],
                    "subject": prefix + ".{type}",
                    "stream": stream,
                },
            )
            assert r.status_code == 201, r.text
            with spans.tracer.start_as_current_span("POST /orders") as request:
                async with aconn.transaction():
                    await set_trace_context(aconn, tracestate=None)
                    await aconn.execute("SET LOCAL outbox.tracestate = 'vendor=x'")
                    traced = await apublish(aconn, "order.placed", {"n": 1})
            async with aconn.transaction():
                plain = await apublish(aconn, "order.placed", {"n": 2})
            writer = request.get_span_context()

            async def both() -> list[Any]:
                got = await stream_contents(NATS_URL, stream)
                return got if len(got) == 2 else []

            got = {m.event_id: m for m in await wait_for(both, timeout=20, what="2 messages")}
        (publish,) = [s for s in spans.named("publish") if s.context.trace_id == writer.trace_id]
        assert publish.parent is not None and publish.parent.span_id == writer.span_id
        assert publish.attributes["messaging.system"] == "nats"
        assert publish.attributes["messaging.destination.name"] == f"{prefix}.order.placed"
        assert publish.attributes["messaging.message.id"] == f"evt_{traced}"
        trace_id, parent, _ = parse_traceparent(got[traced].headers["traceparent"])
        assert int(trace_id, 16) == writer.trace_id
        assert int(parent, 16) == publish.context.span_id
        assert got[traced].headers["tracestate"] == "vendor=x"
        assert "traceparent" not in got[plain].headers
    finally:
        await delete_stream(NATS_URL, stream)


async def test_amqp_messages_carry_the_publish_span_as_parent(
    settings: Settings, aconn: psycopg.AsyncConnection[Any], spans: Spans
) -> None:
    need_amqp()
    prefix = unique("tr")
    async with (
        amqp_queue("amq.topic", f"{prefix}.#") as queue,
        serve_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, headers=AUTH, timeout=10) as api,
    ):
        r = await api.post(
            "/sinks",
            json={
                "name": "rmq",
                "url": AMQP_URL,
                "event_types": ["order.*"],
                "exchange": "amq.topic",
                "routing_key": prefix + ".{type}",
            },
        )
        assert r.status_code == 201, r.text
        with spans.tracer.start_as_current_span("POST /orders") as request:
            async with aconn.transaction():
                await set_trace_context(aconn)
                traced = await apublish(aconn, "order.placed", {"n": 1})
        writer = request.get_span_context()
        await wait_for(lambda: len(queue.received) == 1, timeout=20, what="the message")
        (msg,) = queue.received
    (publish,) = [s for s in spans.named("publish") if s.context.trace_id == writer.trace_id]
    assert publish.parent is not None and publish.parent.span_id == writer.span_id
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.destination.name"] == "amq.topic"
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == (
        f"{prefix}.order.placed"
    )
    assert msg.event_id == traced
    trace_id, parent, _ = parse_traceparent(msg.headers["traceparent"])
    assert (int(trace_id, 16), int(parent, 16)) == (writer.trace_id, publish.context.span_id)


async def test_outbox_serve_exports_its_spans_over_otlp(
    db_url: str, aconn: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Configured by OTEL_* variables only; what is queued at SIGTERM is exported too."""
    async with otlp_receiver() as collector, running() as rx:
        rx.script(Reply(503), then=Reply(200))
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OUTBOX_RETRY_SCHEDULE": "100ms,100ms",
        }
        with serve_processes() as procs:
            serve = ServeProcess(db_url, tmp_path / "serve.log", env=env)
            procs.append(serve)
            await serve.wait_ready()
            assert "tracing: exporting spans as outbox-relay with otlp" in serve.log()
            async with httpx.AsyncClient(base_url=serve.base_url, headers=AUTH) as api:
                await hook(api, rx.url)
            async with aconn.transaction():  # the writer: any language, one SET LOCAL
                await aconn.execute(f"SET LOCAL outbox.traceparent = '{TP2}'")
                traced = await apublish(aconn, "order.placed", {"n": 1})
            async with aconn.transaction():
                plain = await apublish(aconn, "order.placed", {"n": 2})
            await wait_for(
                lambda: len(to(rx, traced)) == 2 and to(rx, plain), timeout=20, what="deliveries"
            )
            serve.signal(signal.SIGTERM)
            assert await serve.wait(timeout=30) == 0, serve.log()
        writer_trace, writer_span, _ = parse_traceparent(TP2)
        ours = collector.of_trace(writer_trace)
        assert not collector.errors, collector.errors
        names = sorted(s.name for s in ours)
        assert names == ["POST", "POST", "dispatch order.placed"], names
        assert all(s.parent_span_id == writer_span for s in ours)
        assert all(s.resource["service.name"] == "outbox-relay" for s in ours)
        posts = sorted(
            (s for s in ours if s.name == "POST"),
            key=lambda s: s.attributes["outbox.delivery.attempt"],
        )
        assert [s.attributes["http.response.status_code"] for s in posts] == [503, 200]
        assert [s.status_code for s in posts] == [2, 0]  # ERROR, UNSET
        sent = [parse_traceparent(r.headers["traceparent"]) for r in to(rx, traced)]
        assert [p for _, p, _ in sent] == [s.span_id for s in posts]
        # The traceless event: not a span anywhere, not even a root of its own.
        assert not [s for s in collector.spans if s.attributes.get("outbox.event.id") == plain]
        assert "traceparent" not in to(rx, plain)[0].headers


async def test_a_bad_otel_variable_stops_serve_at_start_naming_it(
    db_url: str, tmp_path: Path
) -> None:
    with serve_processes() as procs:
        serve = ServeProcess(
            db_url, tmp_path / "serve.log", env={"OTEL_TRACES_EXPORTER": "otlp,zipkin-ish"}
        )
        procs.append(serve)
        assert await serve.wait(timeout=30) != 0
    log = serve.log()
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin-ish'" in log, log
    assert "Traceback" not in log
