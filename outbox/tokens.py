"""API tokens: created once, stored only as a SHA-256 digest, each with a scope.

Tokens are ``obx_`` + 32 random bytes (url-safe base64), so a fast hash is
enough; a lookup hashes the presented token and compares digests in constant
time. The bootstrap ``OUTBOX_API_TOKEN`` is never stored; it is ``admin``.

Scopes (CONTRACT.md "Tokens with scopes"): ``admin`` may do everything;
``read`` every GET, ``/ws`` and ``/events``; ``feed`` only ``/ws`` and
``/events``, limited to its event type patterns when it has some.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from outbox.errors import OutboxError
from outbox.events import Matcher, is_pattern
from outbox.rows import record_row
from outbox.sqlfiles import query

PREFIX = "obx_"
SCOPES = ("admin", "read", "feed")


def _sql(name: str) -> str:
    return query(name, "tokens.sql")


class _Listed(NamedTuple):
    """A ``token_list`` row."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    scope: str
    event_types: list[str] | None


class _Stored(NamedTuple):
    """A ``token_verify`` row."""

    id: int
    name: str
    token_hash: str
    scope: str
    event_types: list[str] | None


@dataclass(frozen=True)
class Principal:
    """Who presented a valid token, and what it may do.

    ``identity`` is ``"bootstrap"`` for the env token, else ``"ID:NAME"`` of
    the stored token: a name can be reused after revocation, an id cannot,
    so :func:`is_live` never mistakes a revoked token for its successor.
    ``events`` (feed tokens only) limits the event types it may see; None
    means every type.
    """

    identity: str
    scope: str = "admin"
    events: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.identity.partition(":")[2] or self.identity

    def sees(self) -> Matcher | None:
        """The event types this token may see (None: every type)."""
        return Matcher(self.events) if self.events is not None else None


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
    scope: str = "admin"
    events: tuple[str, ...] | None = None


def check_scope(scope: str, events: list[str] | tuple[str, ...] | None) -> None:
    """Raise naming the field (``scope``, ``events``) when a scope or its patterns cannot work."""
    if scope not in SCOPES:
        raise OutboxError(f"{scope!r} is not one of {', '.join(SCOPES)}", field="scope")
    if events is None:
        return
    if scope != "feed":
        raise OutboxError("only a feed token is limited to event types", field="events")
    if not events:
        raise OutboxError("give at least one pattern (e.g. order.*)", field="events")
    for pattern in events:
        if not is_pattern(pattern):
            raise OutboxError(
                f"invalid pattern {pattern!r} (use exact names such as"
                " user.created, prefix.* or *)",
                field="events",
            )


def create_token(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    scope: str = "admin",
    events: list[str] | tuple[str, ...] | None = None,
) -> str:
    name = name.strip()
    if not name:
        raise OutboxError("NAME: give a non-empty token name")
    check_scope(scope, events)
    token = new_token()
    try:
        with conn.transaction():
            conn.execute(
                _sql("token_insert"),
                {
                    "name": name,
                    "hash": hash_token(token),
                    "scope": scope,
                    "events": list(dict.fromkeys(events)) if events is not None else None,
                },
            )
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "api_tokens_live_name_key":
            raise OutboxError(f"NAME: a live token named {name!r} already exists") from exc
        raise
    return token


def list_tokens(conn: psycopg.Connection[Any]) -> list[TokenInfo]:
    with conn.cursor(row_factory=record_row(_Listed)) as cur:
        rows = cur.execute(_sql("token_list")).fetchall()
    return [
        TokenInfo(
            id=r.id,
            name=r.name,
            created_at=r.created_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
            scope=r.scope,
            events=tuple(r.event_types) if r.event_types is not None else None,
        )
        for r in rows
    ]


def revoke_token(conn: psycopg.Connection[Any], name: str) -> int:
    with conn.transaction():
        cur = conn.execute(_sql("token_revoke"), {"name": name})
    if cur.rowcount == 0:
        raise OutboxError(f"NAME: no live token named {name!r}")
    return cur.rowcount


async def verify_token(
    conn: psycopg.AsyncConnection[Any], token: str | None, bootstrap: str | None
) -> Principal | None:
    """Return who the token belongs to and its scope if valid, else None."""
    if not token:
        return None
    if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return Principal("bootstrap")
    digest = hash_token(token)
    async with conn.cursor(row_factory=record_row(_Stored)) as cur:
        await cur.execute(_sql("token_verify"), {"hash": digest})
        row = await cur.fetchone()
    if row and hmac.compare_digest(str(row.token_hash), digest):
        events = tuple(row.event_types) if row.event_types is not None else None
        return Principal(f"{row.id}:{row.name}", str(row.scope), events)
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
    cur = await conn.execute(_sql("token_is_live"), {"id": int(token_id)})
    return await cur.fetchone() is not None
