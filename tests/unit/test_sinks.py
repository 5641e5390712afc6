"""Sinks without a broker: templates, the message, URLs, the settings check,
and the retention cursor (pure logic)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from outbox.cursor import Cursor
from outbox.events import Matcher
from outbox.relay.sinks.base import (
    Template,
    build_messages,
    envelope,
    redact,
    redact_url,
    safe_key,
)
from outbox.relay.sinks.spec import SinkSettings, SpecError, check_settings, start_cursor
from outbox.relay.sinks.store import protective


def event(id: int, type: str = "user.created", key: str | None = None, trace: str | None = None):  # type: ignore[no-untyped-def]
    return SimpleNamespace(
        id=id,
        type=type,
        payload_json='{"a": 1, "name": "Zoë"}',
        created_at=datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
        key=key,
        traceparent=trace,
        tracestate="vendor=x" if trace else None,
    )


def test_template_renders_type_and_a_key_that_cannot_add_tokens() -> None:
    t = Template("outbox.{type}.{key}")
    assert t.render("ticket.created", "user:42") == "outbox.ticket.created.user:42"
    assert t.render("ticket.created", "a.b *>#\tc") == "outbox.ticket.created.a_b_____c"
    assert t.render("ticket.created", None) == "outbox.ticket.created._"
    assert Template("fixed.subject").render("x.y", None) == "fixed.subject"
    assert safe_key("") == "_"


def test_template_refuses_other_placeholders() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        Template("outbox.{id}")
    with pytest.raises(ValueError, match="placeholders"):
        Template("outbox.{type")


@pytest.mark.parametrize(
    ("text", "stream_subject"),
    [
        ("outbox.{type}", "outbox.>"),
        ("a.b.{type}.{key}", "a.b.>"),
        ("a.x{type}", "a.>"),
        ("plain.subject", "plain.subject"),
    ],
)
def test_stream_subject_captures_every_rendering(text: str, stream_subject: str) -> None:
    t = Template(text)
    t.check_subject()
    assert t.stream_subject() == stream_subject


@pytest.mark.parametrize("bad", ["{type}.x", "a..{type}", "a.*.{type}", "a b.{type}", "a.>"])
def test_bad_subjects_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Template(bad).check_subject()


def test_envelope_is_json_with_the_stored_payload() -> None:
    body = envelope(7, "user.created", "2024-01-15T10:30:00+00:00", None, '{"a": [1, 2]}')
    assert json.loads(body) == {
        "id": "evt_7",
        "type": "user.created",
        "timestamp": "2024-01-15T10:30:00+00:00",
        "key": None,
        "data": {"a": [1, 2]},
    }
    assert json.loads(envelope(7, "a.b", "t", 'k"é', "null"))["key"] == 'k"é'


def test_messages_carry_id_type_key_and_traceparent_headers() -> None:
    trace = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    events = [event(1), event(2, "user.deleted"), event(3, key="user:3", trace=trace)]
    msgs = build_messages(events, Matcher(["user.created"]), Template("o.{type}.{key}"))
    assert [m.event_id for m in msgs] == [1, 3]
    assert msgs[0].headers == {"Outbox-Event-Id": "evt_1", "Outbox-Event-Type": "user.created"}
    assert msgs[0].msg_id == "evt_1" and msgs[0].destination == "o.user.created._"
    assert msgs[1].headers["Outbox-Key"] == "user:3"
    assert msgs[1].headers["traceparent"] == trace
    assert msgs[1].headers["tracestate"] == "vendor=x"
    assert msgs[1].destination == "o.user.created.user:3"
    assert json.loads(msgs[1].body)["data"] == {"a": 1, "name": "Zoë"}


def test_messages_are_the_envelope_and_the_rendering_of_each_event() -> None:
    """build_messages works a batch's repeats out once (per type, per
    timestamp); each message must still be exactly what envelope() and the
    template give for its own event."""
    from outbox.relay.feed import Event

    t0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    t1 = datetime(2024, 1, 15, 10, 30, 0, 5, tzinfo=UTC)
    events = [
        Event(1, 10, "user.created", '{"a":1}', t0),
        Event(2, 10, "user.created", '{"a":2}', t0, key="k.1 *é"),
        Event(3, 11, "user.deleted", "null", t1, key='q"uote'),
        Event(4, 11, "order.paid", '{"ü":[1]}', t1),
        Event(5, 12, "user.created", '{"a":5}', t0, key=None, traceparent="00-x", tracestate="s"),
    ]
    for text in ("o.{type}", "o.{type}.{key}", "fixed", "{key}.{type}"):
        template = Template(text)
        msgs = build_messages(events, Matcher(["user.*", "order.paid"]), template)
        assert [m.event_id for m in msgs] == [1, 2, 3, 4, 5]
        for e, m in zip(events, msgs, strict=True):
            assert m.body == envelope(e.id, e.type, e.timestamp, e.key, e.payload_json)
            assert m.destination == template.render(e.type, e.key)
            assert m.msg_id == f"evt_{e.id}"
    assert [m.event_id for m in build_messages(events, Matcher(["user.deleted"]), template)] == [3]


def test_passwords_are_masked() -> None:
    assert (
        redact_url("amqp://guest:s3cret@127.0.0.1:5672/vh") == "amqp://guest:***@127.0.0.1:5672/vh"
    )
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redact_url("nats://tok@h") == "nats://tok@h"
    assert redact("failed for s3cret", "amqp://u:s3cret@h/") == "failed for ***"


def test_settings_fill_in_defaults_per_kind() -> None:
    n = check_settings(SinkSettings("n", None, "nats://127.0.0.1:4222"))
    assert (n.kind, n.subject, n.exchange) == ("nats", "outbox.{type}", None)
    a = check_settings(SinkSettings("a", "amqp", "amqp://guest:guest@127.0.0.1/"))
    assert (a.exchange, a.routing_key, a.subject) == ("amq.topic", "{type}", None)
    assert check_settings(SinkSettings("a", None, "amqp://h/", exchange="")).exchange == ""


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (SinkSettings(" ", None, "nats://h"), "name"),
        (SinkSettings("x", None, "http://h"), "kind"),
        (SinkSettings("x", "nats", "amqp://h"), "url"),
        (SinkSettings("x", "nats", "nats://"), "url"),
        (SinkSettings("x", "nats", "nats://h:99999"), "url"),
        (SinkSettings("x", "nats", "nats://h", event_types=()), "event_types"),
        (SinkSettings("x", "nats", "nats://h", event_types=("Bad",)), "event_types"),
        (SinkSettings("x", "nats", "nats://h", subject="{type}"), "subject"),
        (SinkSettings("x", "nats", "nats://h", stream="a.b"), "stream"),
        (SinkSettings("x", "nats", "nats://h", exchange="e"), "exchange"),
        (SinkSettings("x", "amqp", "amqp://h", subject="s"), "subject"),
        (SinkSettings("x", "amqp", "amqp://h", exchange="bad name"), "exchange"),
        (SinkSettings("x", "amqp", "amqp://h", routing_key="{nope}"), "routing_key"),
    ],
)
def test_bad_settings_name_the_field(settings: SinkSettings, field: str) -> None:
    with pytest.raises(SpecError) as info:
        check_settings(settings)
    assert info.value.field == field


def test_start_cursor() -> None:
    now = Cursor(10, 20, (15,))
    assert start_cursor(None, now) == now
    assert start_cursor("now", now) == now
    assert start_cursor("beginning", now) == Cursor(0)
    assert start_cursor(Cursor(3).encode(), now) == Cursor(3)
    with pytest.raises(SpecError):
        start_cursor("garbage", now)


def test_protective_cursor_keeps_what_any_cursor_has_not_passed() -> None:
    assert protective([]) is None
    c = protective([Cursor(10, 100, (5,)), Cursor(20, 90, (7, 8))])
    assert c == Cursor(10, 90, (5, 7, 8))


def test_the_sink_oracle_sees_gaps_repeats_disorder_and_rollbacks() -> None:
    from tests.support.sinks import Received, judge_stream

    committed = {1: ("a.b", {"n": 1}), 2: ("a.b", {"n": 2}), 3: ("a.b", {"n": 3})}

    def msg(eid: int, n: int | None = None) -> Received:
        body = {"type": "a.b", "data": {"n": eid if n is None else n}}
        return Received(f"evt_{eid}", "s", {"Outbox-Event-Type": "a.b"}, body)

    def judge(received: list[Received], exactly_once: bool = True) -> Any:
        return judge_stream(
            received, committed, {9}, Matcher(None), [1, 2, 3], exactly_once=exactly_once
        )

    assert judge([msg(1), msg(2), msg(3)]).ok
    assert judge([msg(1), msg(3)]).missing == [2]
    assert "out of commit order" in judge([msg(2), msg(1), msg(3)]).violations[0]
    assert judge([msg(1), msg(1), msg(2), msg(3)]).violations  # a repeat in JetStream
    assert judge([msg(1), msg(2), msg(1), msg(3)], exactly_once=False).ok  # AMQP: allowed
    assert "different body" in judge([msg(1), msg(1, 7), msg(2), msg(3)], False).violations[0]
    assert "rolled-back" in judge([msg(1), msg(9), msg(2), msg(3)]).violations[0]
