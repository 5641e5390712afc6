"""API tokens: created once, stored only as a SHA-256 digest.

Tokens are ``obx_`` + 32 random bytes (url-safe base64), so a fast hash is
enough; a lookup hashes the presented token and compares digests in constant
time. The bootstrap ``OUTBOX_API_TOKEN`` is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from outbox.errors import OutboxError

PREFIX = "obx_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def create_token(conn: psycopg.Connection[Any], name: str) -> str:
    name = name.strip()
    if not name:
        raise OutboxError("NAME: give a non-empty token name")
    token = new_token()
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO outbox.api_tokens (name, token_hash) VALUES (%s, %s)",
                (name, hash_token(token)),
            )
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "api_tokens_live_name_key":
            raise OutboxError(f"NAME: a live token named {name!r} already exists") from exc
        raise
    return token


def list_tokens(conn: psycopg.Connection[Any]) -> list[TokenInfo]:
    rows = conn.execute(
        "SELECT id, name, created_at, last_used_at, revoked_at FROM outbox.api_tokens ORDER BY id"
    ).fetchall()
    return [TokenInfo(*r) for r in rows]


def revoke_token(conn: psycopg.Connection[Any], name: str) -> int:
    with conn.transaction():
        cur = conn.execute(
            "UPDATE outbox.api_tokens SET revoked_at = now()"
            " WHERE name = %s AND revoked_at IS NULL",
            (name,),
        )
    if cur.rowcount == 0:
        raise OutboxError(f"NAME: no live token named {name!r}")
    return cur.rowcount


async def verify_token(
    conn: psycopg.AsyncConnection[Any], token: str | None, bootstrap: str | None
) -> str | None:
    """Return the token's identity if valid, else None.

    The identity is ``"bootstrap"`` for the env token, else ``"ID:NAME"`` of
    the stored token: a name can be reused after revocation, an id cannot,
    so :func:`is_live` never mistakes a revoked token for its successor.
    """
    if not token:
        return None
    if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return "bootstrap"
    digest = hash_token(token)
    cur = await conn.execute(
        "SELECT id, name, token_hash FROM outbox.api_tokens"
        " WHERE token_hash = %s AND revoked_at IS NULL",
        (digest,),
    )
    row = await cur.fetchone()
    if row and hmac.compare_digest(str(row[2]), digest):
        return f"{row[0]}:{row[1]}"
    return None


async def is_live(conn: psycopg.AsyncConnection[Any], identity: str) -> bool:
    """Is the token behind ``identity`` (from :func:`verify_token`) still valid?

    Used to close the sockets of revoked tokens.
    """
    if identity == "bootstrap":
        return True
    token_id, _, _ = identity.partition(":")
    if not token_id.isdigit():
        return False
    cur = await conn.execute(
        "SELECT 1 FROM outbox.api_tokens WHERE id = %s AND revoked_at IS NULL", (int(token_id),)
    )
    return await cur.fetchone() is not None
