"""Authentication for the REST API and /ws.

Accepted: ``Authorization: Bearer T``, ``X-API-Key: T`` and, for the seed's
WebSocket clients, ``?token=T`` / ``?api_key=T``. Valid tokens are the
bootstrap ``OUTBOX_API_TOKEN`` (admin) and live stored tokens (see
outbox/tokens.py), each with a scope: :func:`scope_needed` says which scope
an operation needs, :func:`forbidden` the 403 when the token's is too weak.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from outbox.api.state import AppState
from outbox.tokens import Principal, verify_token

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
) -> tuple[Principal | None, str]:
    """Return ``(principal, "")`` when valid, else ``(None, reason)``."""
    state: AppState = conn.app.state.outbox
    token = presented_token(conn, allow_query=allow_query)
    if not token:
        return None, MISSING
    async with state.pool.connection() as db:
        principal = await verify_token(db, token, state.settings.api.api_token)
    if principal is None:
        return None, INVALID
    return principal, ""


# What each scope may do, weakest first: a scope may do what those before it may.
RANK = {"feed": 0, "read": 1, "admin": 2}


def scope_needed(method: str, path: str) -> str:
    """The weakest scope allowed ``method path``: feed for /ws and GET /events,
    read for every other GET, admin for everything else."""
    if path == "/ws" or (path == "/events" and method in ("GET", "HEAD")):
        return "feed"
    if method in ("GET", "HEAD"):
        return "read"
    return "admin"


def forbidden(principal: Principal, needed: str, what: str) -> str | None:
    """The 403 detail when ``principal`` may not do ``what``, else None."""
    if RANK.get(principal.scope, -1) >= RANK[needed]:
        return None
    return (
        f"this token has scope {principal.scope!r}; {what} needs a token with scope "
        f"{needed!r}" + ("" if needed == "admin" else " or 'admin'")
    )
