"""What outbox/redact.py hides: every shape a secret takes in a log line."""

from __future__ import annotations

from outbox.redact import redact


def test_redact_covers_every_shape() -> None:
    cases = {
        "GET /ws?%74oken=obx_abcdefghijk HTTP/1.1": "GET /ws?%74oken=*** HTTP/1.1",
        "/ws?events=a.*&api_key=hello&since=x": "/ws?events=a.*&api_key=***&since=x",
        "< Authorization: Bearer abcdefgh": "< Authorization: ***",
        "> x-api-key: abcdef": "> x-api-key: ***",
        "(b'x-api-key', b'sekrit')": "(b'x-api-key', b'***')",
        "Sec-WebSocket-Protocol: bearer, tok": "Sec-WebSocket-Protocol: ***",
        "amqp://guest:hunter2@10.0.0.1:5672/ down": "amqp://guest:***@10.0.0.1:5672/ down",
        "nats://s3cr3t@localhost:4222": "nats://***@localhost:4222",
        "host=x password=abc dbname=y": "host=x password=*** dbname=y",
        "secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw": "secret ***",
        "postgresql://postgres@127.0.0.1/x": "postgresql://postgres@127.0.0.1/x",
        "/events?since=abc&limit=10": "/events?since=abc&limit=10",
    }
    for text, want in cases.items():
        assert redact(text) == want, text
    assert redact("token is plain-secret-value", ["plain-secret-value"]) == "token is ***"
