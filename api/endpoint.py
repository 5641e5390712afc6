"""What every REST handler shares: authentication, input parsing, JSON output
and the OpenAPI description of the operation.

``@endpoint(Doc(...))`` wraps a Starlette handler: it authenticates first
(unless ``auth=False``) and keeps the :class:`Doc` on the function, where
``api/openapi.py`` finds it. So the published document is built from the
same models the handler validates with.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from psycopg.rows import scalar_row
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from outbox.api.auth import authenticate, forbidden, scope_needed
from outbox.api.errors import ApiError, ValidationFailed, from_pydantic
from outbox.api.state import AppState
from outbox.sqlfiles import query
from outbox.tokens import Principal

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]

NO_TOKEN = "no API token configured: set OUTBOX_API_TOKEN or run `outbox token create NAME`"
TOUCH_EVERY = 60.0
_ID_RE = re.compile(r"^[0-9]{1,19}$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
MAX_ID = 2**63 - 1


def sql(name: str) -> str:
    """A statement of sql/api.sql."""
    return query(name, "api.sql")


@dataclass(frozen=True)
class Doc:
    """The OpenAPI description of one operation.

    ``responses`` maps a success status to its model, to a media type string
    for non-JSON bodies, or to None for no body. ``errors`` lists the errors
    particular to the operation (404, 409, 410) with what they mean; the
    common ones (400, 401, 413, 422, 503) follow from the other fields.
    """

    summary: str
    responses: Mapping[int, type[BaseModel] | str | None]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    auth: bool = True
    # Needs an admin token (create/patch/delete of sinks); see require_admin.
    admin: bool = False
    errors: Mapping[int, str] = field(default_factory=dict)
    description: str = ""


def endpoint(doc: Doc) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def run(request: Request) -> Response:
            if doc.auth or doc.admin:
                principal = await require_token(request)
                needed = "admin" if doc.admin else scope_needed(request.method, request.url.path)
                detail = forbidden(principal, needed, f"{request.method} {request.url.path}")
                if detail is not None:
                    raise ApiError(403, detail)
            return await fn(request)

        run.openapi_doc = doc  # type: ignore[attr-defined]
        return run

    return wrap


def state_of(request: Request) -> AppState:
    st: AppState = request.app.state.outbox
    return st


async def require_token(request: Request) -> Principal:
    """The caller's token (identity and scope), or a 401 saying what is wrong.

    Also kept as ``request.state.principal`` for handlers that limit what a
    token sees (a feed token's event types).
    """
    principal, reason = await authenticate(request)
    st = state_of(request)
    if principal is None:
        if not st.settings.api.api_token and not await _any_live_token(st):
            reason = NO_TOKEN
        raise ApiError(401, reason, headers={"WWW-Authenticate": "Bearer"})
    await _touch(request, st, principal.identity)
    request.state.principal = principal
    return principal


def principal_of(request: Request) -> Principal | None:
    """The token :func:`require_token` accepted for this request."""
    found: Principal | None = getattr(request.state, "principal", None)
    return found


async def require_admin(request: Request) -> Principal:
    """The caller's token if its scope is admin (else 401/403)."""
    principal = await require_token(request)
    detail = forbidden(principal, "admin", f"{request.method} {request.url.path}")
    if detail is not None:
        raise ApiError(403, detail)
    return principal


async def _any_live_token(st: AppState) -> bool:
    async with st.pool.connection() as db, db.cursor(row_factory=scalar_row) as cur:
        await cur.execute(sql("token_any_live"))
        live = await cur.fetchone()
    return bool(live)


async def _touch(request: Request, st: AppState, identity: str) -> None:
    """Record ``last_used_at`` at most once a minute per token and process.

    ``identity`` is ``"ID:NAME"`` for stored tokens (outbox.tokens.verify_token).
    """
    token_id, sep, _ = identity.partition(":")
    if not sep or not token_id.isdigit():
        return  # the bootstrap token is not stored
    seen: dict[str, float] | None = getattr(request.app.state, "token_touched", None)
    if seen is None:
        seen = request.app.state.token_touched = {}
    now = time.monotonic()
    if now - seen.get(token_id, -TOUCH_EVERY) < TOUCH_EVERY:
        return
    seen[token_id] = now
    async with st.pool.connection() as db:
        await db.execute(sql("token_touch"), {"id": int(token_id)})


def path_id(request: Request, name: str) -> int:
    raw = str(request.path_params[name])
    if not _ID_RE.match(raw) or not 1 <= int(raw) <= MAX_ID:
        raise ValidationFailed.one(name, f"must be an integer from 1 to {MAX_ID}")
    return int(raw)


def parse_query(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise from_pydantic(exc) from None


async def parse_body(request: Request, model: type[M], *, required: bool = True) -> M | None:
    """The JSON object body validated by ``model``; None when optional and empty.

    Malformed JSON is a 400, a body that is not an object or does not fit the
    model a 422 naming the field.
    """
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ValidationFailed.one("body", "a JSON object is required")
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"invalid JSON body: {_json_error(exc)}") from None
    if not isinstance(data, dict):
        raise ValidationFailed.one("body", "must be a JSON object")
    _check_text(data, "")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_pydantic(exc) from None


def _check_text(value: object, where: str) -> None:
    """Refuse strings Postgres cannot store: NUL characters and unpaired
    surrogates (which JSON's \\u escapes can express)."""
    if isinstance(value, str):
        if "\x00" in value or _SURROGATE_RE.search(value):
            raise ValidationFailed.one(
                where or "body", "must not contain NUL characters or unpaired surrogates"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where or "body")
            _check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}.{i}")


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "not UTF-8 text"


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code, media_type="application/json")
