"""Errors as JSON ``{"detail": "..."}``, never a traceback.

* :class:`ApiError` (an ``HTTPException``) carries a status and a detail;
  :class:`ValidationFailed` is the 422 whose detail names the field and why,
  with the same information per field in ``errors``.
* Starlette's own 404/405 become JSON too (one handler for ``HTTPException``).
* A database that cannot be reached is a 503, not a 500.
* :class:`BodyLimit` caps request bodies at ``settings.max_request_body``
  (413), whether the client sends ``Content-Length`` or streams chunks.
* :class:`CatchAll` turns anything unexpected into a logged 500 whose body
  says nothing about internals.

``api/app.py`` installs :data:`exception_handlers` and :func:`middleware`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox.api.config import ApiSettings
from outbox.errors import OutboxError

log = logging.getLogger("outbox.api")

NOT_FOUND = "Webhook not found"


class ApiError(HTTPException, OutboxError):
    """An error the client can act on: ``{"detail": detail}`` with ``status_code``.

    A Starlette ``HTTPException`` (the handler below answers it) and, like
    every error of the package, an :class:`~outbox.errors.OutboxError`.
    """

    def __init__(
        self, status_code: int, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        HTTPException.__init__(self, status_code, detail, headers)
        self.message, self.field, self.related = detail, None, ()


class ValidationFailed(ApiError):
    """422: the detail is ``"field: why"`` (several joined by ``"; "``)."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = [{"field": f, "message": m} for f, m in errors]
        super().__init__(422, "; ".join(f"{f}: {m}" if f else m for f, m in errors))
        self.field = errors[0][0] if errors else None

    @classmethod
    def one(cls, field: str, message: str) -> ValidationFailed:
        return cls([(field, message)])


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


# Pydantic's wording for the common cases, said the way an API user reads it.
_MESSAGES = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
}


def _field(loc: Sequence[int | str], prefix: str = "") -> str:
    parts = [str(p) for p in loc]
    return ".".join([prefix, *parts] if prefix else parts)


def from_pydantic(exc: ValidationError, *, prefix: str = "") -> ValidationFailed:
    """Turn a pydantic error into a 422 naming each field (``prefix`` for nesting)."""
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = _MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        errors.append((_field(err["loc"], prefix) or "body", msg))
    return ValidationFailed(errors)


def error_response(status: int, detail: str, extra: Mapping[str, Any] | None = None) -> Response:
    return JSONResponse({"detail": detail, **(extra or {})}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    extra = {"errors": exc.errors} if isinstance(exc, ValidationFailed) else None
    resp = error_response(exc.status_code, str(exc.detail), extra)
    resp.headers.update(exc.headers or {})
    return resp


async def _database_down(request: Request, exc: Exception) -> Response:
    # Connection-level failures only (see the handler keys): the request may
    # succeed once Postgres is back, so say so instead of failing with a 500.
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "database unavailable, try again later")


exception_handlers: dict[Any, Any] = {
    HTTPException: _http_error,
    psycopg.OperationalError: _database_down,
    PoolTimeout: _database_down,
}


class BodyLimit:
    """Refuse request bodies larger than ``limit`` bytes with 413.

    A declared ``Content-Length`` over the limit is refused before the body is
    read; a streamed body is counted as it arrives and reading it raises
    :class:`BodyTooLarge`, which the exception handler turns into the 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            too_large = BodyTooLarge(self.limit)
            await error_response(413, too_large.detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class CatchAll:
    """The last line: log the exception with its traceback, answer a bare 500.

    Sits inside Starlette's ServerErrorMiddleware, which would otherwise
    re-raise into the server after answering. If the response has already
    started there is nothing left to answer, so the error propagates.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            # The path only: query strings may carry a token (?token=).
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, "internal server error")(scope, receive, send)


def middleware(settings: ApiSettings) -> list[Middleware]:
    """Outermost first: the catch-all wraps the body limit and every route."""
    return [Middleware(CatchAll), Middleware(BodyLimit, limit=settings.max_request_body)]
