"""Webhook bodies and signatures.

Two signature schemes on every request, so both kinds of receivers verify:

* the seed's ``X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret utf-8, body)>``;
* Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256(key,
  "{id}.{timestamp}.{body}")>``, where the key is the base64-decoded part of
  a ``whsec_`` secret, or the utf-8 bytes of any other secret.

The body is ``json.dumps(payload, sort_keys=True)``: the seed's verifier
re-serializes the *parsed* body that way, so byte-identical output is what
makes it accept our requests (and raw-body verifiers work as well).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
from datetime import datetime
from typing import Any

SECRET_PREFIX = "whsec_"
PAYLOAD_FORMATS = ("raw", "envelope")


def generate_secret() -> str:
    """A new secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _decode_prefixed(secret: str) -> bytes | None:
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None


def check_secret(secret: str) -> None:
    """Raise :class:`ValueError` (with a message for the API) for a bad secret."""
    if not secret or not secret.strip():
        raise ValueError("secret must not be empty")
    if secret.startswith(SECRET_PREFIX) and not _decode_prefixed(secret):
        raise ValueError("a secret starting with whsec_ must continue with base64")


@functools.lru_cache(maxsize=4096)
def signing_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key of ``secret``."""
    if secret.startswith(SECRET_PREFIX):
        key = _decode_prefixed(secret)
        if key:
            return key
    return secret.encode("utf-8")


def webhook_message_id(event_id: int) -> str:
    """``webhook-id``: the same on every retry, so receivers can de-duplicate."""
    return f"evt_{event_id}"


@functools.lru_cache(maxsize=4096)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``key``, to copy: the key is hashed in once, not
    on every request (secrets live in the delivery rows' webhooks anyway)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _hmac(key: bytes, *parts: bytes) -> hmac.HMAC:
    mac = _keyed(key).copy()
    for part in parts:
        mac.update(part)
    return mac


def seed_signature(secret: str, body: bytes) -> str:
    digest = _hmac(secret.encode("utf-8"), body).hexdigest()
    return f"sha256={digest}"


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = _hmac(key, f"{msg_id}.{timestamp}.".encode(), body).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def render_body(
    payload: Any,
    *,
    payload_format: str,
    event_id: int,
    event_type: str,
    created_at: datetime,
    key: str | None = None,
) -> bytes:
    """The request body: the payload itself, or the ``envelope`` around it."""
    if payload_format == "envelope":
        payload = {
            "id": webhook_message_id(event_id),
            "type": event_type,
            "timestamp": created_at.isoformat(),
            "key": key,
            "data": payload,
        }
    return json.dumps(payload, sort_keys=True).encode("utf-8")


def sign_headers(
    *,
    body: bytes,
    event_id: int,
    event_type: str,
    webhook_id: int,
    secret: str,
    previous_secret: str | None,
    timestamp: int,
    seed_secret: str | None = None,
) -> dict[str, str]:
    """Every header of one attempt (the timestamp is the attempt's own).

    While a rotated-out ``previous_secret`` is still valid, ``webhook-signature``
    carries a signature with each secret, space-separated, as Standard
    Webhooks allows. The seed header has room for one: ``seed_secret`` (the
    webhook's ``seed_signature`` choice during a rotation; the current
    secret when None).
    """
    msg_id = webhook_message_id(event_id)
    signature = standard_signature(signing_key(secret), msg_id, timestamp, body)
    if previous_secret:
        old = standard_signature(signing_key(previous_secret), msg_id, timestamp, body)
        signature = f"{signature} {old}"
    return {
        "content-type": "application/json",
        "x-webhook-event": event_type,
        "x-webhook-id": str(webhook_id),
        "x-webhook-signature": seed_signature(seed_secret or secret, body),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


SIGNATURE_HEADERS = ("x-webhook-signature", "webhook-signature")
REDACTED = "[redacted]"


def redact(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` as the console shows them: signature values replaced."""
    return {k: REDACTED if k.lower() in SIGNATURE_HEADERS else v for k, v in headers.items()}
