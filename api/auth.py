"""Authentication for the REST API and /ws.

Accepted: ``Authorization: Bearer T``, ``X-API-Key: T`` and, for the seed's
WebSocket clients, ``?token=T`` / ``?api_key=T``. Valid tokens are the
bootstrap ``OUTBOX_API_TOKEN`` and live stored tokens (see outbox/tokens.py).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from outbox.api.state import AppState
from outbox.tokens import verify_token

MISSING = "Missing API key"
INVALID = "Invalid or expired API key"


def presented_token(conn: HTTPConnection, *, allow_query: bool = False) -> str | None:
    auth = conn.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = conn.headers.get("x-api-key")
    if key:
        return key.strip()
    if allow_query:
        q = conn.query_params.get("token") or conn.query_params.get("api_key")
        if q:
            return q
    return None


async def authenticate(
    conn: HTTPConnection, *, allow_query: bool = False
) -> tuple[str | None, str]:
    """Return ``(token_name, "")`` when valid, else ``(None, reason)``."""
    state: AppState = conn.app.state.outbox
    token = presented_token(conn, allow_query=allow_query)
    if not token:
        return None, MISSING
    async with state.pool.connection() as db:
        name = await verify_token(db, token, state.settings.api_token)
    if name is None:
        return None, INVALID
    return name, ""
