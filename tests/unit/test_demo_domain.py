"""The demo's domain without a database: traffic options, the seed and Standard
Webhooks signatures, and the built-in receiver (the database side is in
tests/db/test_demo_domain.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from outbox.cli.demo_domain import (
    Receiver,
    Traffic,
    generate_secret,
    verify_seed_signature,
    verify_standard_signature,
)


def test_traffic_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        Traffic("", rate=0)


def test_seed_signature_matches_the_seed_verifier() -> None:
    secret = "optional-secret-for-signing"
    payload = {"user_id": 123, "username": "testuser", "a": [1, 2]}
    body = json.dumps(payload, sort_keys=True).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify_seed_signature(secret, body, sig)
    assert not verify_seed_signature(secret, body + b" ", sig)
    assert not verify_seed_signature(secret, body, None)
    assert not verify_seed_signature(secret, body, sig.replace("sha256=", "sha1="))


def test_standard_signature_agrees_with_the_standardwebhooks_library() -> None:
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    secret = generate_secret()
    body = b'{"a": 1}'
    now = datetime.now(UTC)
    header = Webhook(secret).sign("evt_42", now, body.decode())
    ts = str(int(now.timestamp()))
    assert verify_standard_signature(secret, "evt_42", ts, body, header)
    # Several signatures during a rotation: any valid one is enough.
    assert verify_standard_signature(secret, "evt_42", ts, body, f"v1,AAAA {header}")
    assert not verify_standard_signature(secret, "evt_43", ts, body, header)
    assert not verify_standard_signature(secret, "evt_42", str(int(ts) - 3600), body, header)
    assert not verify_standard_signature(generate_secret(), "evt_42", ts, body, header)


def _sign(secret: str, event_id: int, body: bytes) -> dict[str, str]:
    from outbox.cli.demo_domain import _key

    ts = str(int(time.time()))
    msg_id = f"evt_{event_id}"
    std = base64.b64encode(
        hmac.new(_key(secret), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    return {
        "content-type": "application/json",
        "x-webhook-event": "user.created",
        "x-webhook-signature": "sha256="
        + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{std}",
    }


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """``app`` served as the demo serves its receiver (outbox.cli.server)."""
    from outbox.cli.server import HttpServer, bind

    server = HttpServer(app, bind("127.0.0.1", 0), name="receiver")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def test_receiver_accepts_signed_requests_and_refuses_forged_ones() -> None:
    main, flaky = generate_secret(), "plain-secret"
    receiver = Receiver({"main": main, "flaky": flaky}, fail_rate=1.0)
    body = json.dumps({"user_id": 1}, sort_keys=True).encode()
    async with running(receiver.app) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/hooks/main", content=body, headers=_sign(main, 1, body))
        assert r.status_code == 204
        r = await client.post("/hooks/main", content=body, headers=_sign(main, 1, body))
        assert r.status_code == 204  # a retry: same webhook-id
        forged = _sign(main, 2, body)
        r = await client.post("/hooks/main", content=body + b" ", headers=forged)
        assert r.status_code == 401
        r = await client.post("/hooks/main", content=body, headers=_sign(flaky, 3, body))
        assert r.status_code == 401  # signed with another endpoint's secret
        r = await client.post("/hooks/flaky", content=body, headers=_sign(flaky, 4, body))
        assert r.status_code == 503  # fail_rate 1.0: refused on purpose
        r = await client.post("/hooks/nope", content=body, headers=_sign(main, 5, body))
        assert r.status_code == 404
    s = receiver.stats["main"]
    assert (s.ok, s.duplicates, s.bad_signature) == (2, 1, 2)
    assert s.by_type["user.created"] == 2
    assert receiver.stats["flaky"].refused == 1
