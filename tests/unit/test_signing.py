"""Signatures as receivers check them: the standardwebhooks and svix
libraries, and the seed document's ``verify_webhook_signature`` snippet."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from svix.webhooks import Webhook as SvixWebhook
from svix.webhooks import WebhookVerificationError as SvixVerificationError

from outbox.relay.delivery.signing import (
    check_secret,
    generate_secret,
    render_body,
    sign_headers,
    signing_key,
)
from tests.support.paths import ROOT

# Deliberately awkward: unsorted keys, unicode, nesting, floats, null.
PAYLOAD: dict[str, Any] = {
    "username": "Zoë 🚀",
    "user_id": 123,
    "amount": 10.5,
    "referred_by_id": None,
    "tags": ["b", "a"],
    "nested": {"z": 1, "a": {"y": True, "b": False}},
}
SECRETS = [generate_secret(), "optional-secret-for-signing"]
CREATED = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def verify_webhook_signature(payload: dict[str, Any], signature_header: str, secret: str) -> bool:
    """The seed document's verifier, verbatim."""
    payload_json = json.dumps(payload, sort_keys=True)
    expected_signature = hmac.new(
        secret.encode("utf-8"), payload_json.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    received_signature = signature_header.replace("sha256=", "")
    return hmac.compare_digest(expected_signature, received_signature)


def _sign(
    secret: str, *, previous: str | None = None, ts: int | None = None, fmt: str = "raw"
) -> tuple[bytes, dict[str, str]]:
    body = render_body(
        PAYLOAD, payload_format=fmt, event_id=42, event_type="user.created", created_at=CREATED
    )
    headers = sign_headers(
        body=body,
        event_id=42,
        event_type="user.created",
        webhook_id=7,
        secret=secret,
        previous_secret=previous,
        timestamp=int(time.time()) if ts is None else ts,
    )
    return body, headers


def _std(secret: str) -> Webhook:
    # A whsec_ secret is given as is; any other secret's key is its utf-8 bytes.
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


def _svix(secret: str) -> SvixWebhook:
    return SvixWebhook(secret if secret.startswith("whsec_") else secret.encode())


def test_generated_secret_shape() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert signing_key(secret) == base64.b64decode(secret[6:])
    assert generate_secret() != secret


def test_body_is_sorted_json_dumps() -> None:
    body, headers = _sign(generate_secret())
    assert body == json.dumps(PAYLOAD, sort_keys=True).encode()
    assert headers["content-type"] == "application/json"
    assert headers["x-webhook-event"] == "user.created"
    assert headers["x-webhook-id"] == "7"
    assert headers["webhook-id"] == "evt_42"


def test_envelope_body() -> None:
    body, _ = _sign(generate_secret(), fmt="envelope")
    assert json.loads(body) == {
        "id": "evt_42",
        "type": "user.created",
        "timestamp": "2024-01-15T10:30:00+00:00",
        "key": None,  # CONTRACT "Keys and per-key order": null when none
        "data": PAYLOAD,
    }
    assert body == json.dumps(json.loads(body), sort_keys=True).encode()


@pytest.mark.parametrize("secret", SECRETS, ids=["whsec", "plain"])
def test_all_three_verifiers_accept(secret: str) -> None:
    body, headers = _sign(secret)
    assert verify_webhook_signature(json.loads(body), headers["x-webhook-signature"], secret)
    assert _std(secret).verify(body, headers) == PAYLOAD
    _svix(secret).verify(body, headers)  # raises on failure, returns nothing


@pytest.mark.parametrize("secret", SECRETS, ids=["whsec", "plain"])
def test_changed_body_fails_every_verifier(secret: str) -> None:
    body, headers = _sign(secret)
    changed = json.loads(body)
    changed["user_id"] = 124
    tampered = json.dumps(changed, sort_keys=True).encode()
    assert not verify_webhook_signature(changed, headers["x-webhook-signature"], secret)
    with pytest.raises(WebhookVerificationError):
        _std(secret).verify(tampered, headers)
    with pytest.raises(SvixVerificationError):
        _svix(secret).verify(tampered, headers)


def test_old_timestamp_fails() -> None:
    secret = generate_secret()
    body, headers = _sign(secret, ts=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        _std(secret).verify(body, headers)
    with pytest.raises(SvixVerificationError, match="too old"):
        _svix(secret).verify(body, headers)


def test_replayed_signature_with_new_timestamp_fails() -> None:
    secret = generate_secret()
    body, headers = _sign(secret, ts=int(time.time()) - 10)
    headers["webhook-timestamp"] = str(int(time.time()))
    with pytest.raises(WebhookVerificationError):
        _std(secret).verify(body, headers)


def test_wrong_secret_fails() -> None:
    body, headers = _sign(generate_secret())
    with pytest.raises(WebhookVerificationError):
        _std(generate_secret()).verify(body, headers)


def test_rotation_overlap_signs_with_both_secrets() -> None:
    old, new = generate_secret(), generate_secret()
    body, headers = _sign(new, previous=old)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert _std(secret).verify(body, headers) == PAYLOAD
        _svix(secret).verify(body, headers)  # raises on failure, returns nothing
    # The seed header has room for one signature: the current secret's.
    assert verify_webhook_signature(json.loads(body), headers["x-webhook-signature"], new)


def test_check_secret() -> None:
    check_secret(generate_secret())
    check_secret("optional-secret-for-signing")
    for bad, why in [("", "empty"), ("   ", "empty"), ("whsec_!!!", "base64")]:
        with pytest.raises(ValueError, match=why):
            check_secret(bad)


@pytest.mark.parametrize("secret", ["my-secret-key", generate_secret()], ids=["plain", "whsec"])
def test_readme_verify_snippet_works_for_every_kind_of_secret(secret: str) -> None:
    """README's receiver snippet, run as written, for a chosen and a generated secret."""

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- verify-snippet -->", 1)[1].split("<!-- /verify-snippet -->")[0]
    code = block.split("```python", 1)[1].rsplit("```", 1)[0]
    body = json.dumps({"user_id": 7}, sort_keys=True).encode()
    headers = sign_headers(
        body=body,
        event_id=42,
        event_type="user.created",
        webhook_id=1,
        secret=secret,
        previous_secret=None,
        timestamp=int(time.time()),
    )

    class FakeRequest:
        pass

    request = FakeRequest()
    request.body = body  # type: ignore[attr-defined]
    request.headers = headers  # type: ignore[attr-defined]
    scope: dict[str, Any] = {"secret": secret, "request": request}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["event"] == {"user_id": 7}
