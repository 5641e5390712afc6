"""REST errors: JSON everywhere, body size cap, no 500 for bad input, and a
catch-all that logs the failure but tells the client nothing about it."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from outbox.api import errors
from outbox.api.config import ApiSettings
from outbox.api.endpoint import Doc, endpoint, parse_body
from outbox.api.schemas import RecoverRequest


async def _boom(request: Request) -> Response:
    raise RuntimeError("internal detail: password=hunter2")


async def _db_down(request: Request) -> Response:
    raise psycopg.OperationalError("connection refused")


@endpoint(Doc("echo", {200: None}, body=RecoverRequest, auth=False))
async def _echo(request: Request) -> Response:
    body = await parse_body(request, RecoverRequest)
    assert body is not None
    return JSONResponse({"since": body.since.isoformat()})


@pytest.fixture
async def small_app() -> AsyncIterator[httpx.AsyncClient]:
    """The error handling alone, on a tiny app (no database needed)."""
    app = Starlette(
        routes=[
            Route("/boom", _boom),
            Route("/db", _db_down),
            Route("/echo", _echo, methods=["POST"]),
        ],
        middleware=errors.middleware(ApiSettings(max_request_body=1024)),
        exception_handlers=errors.exception_handlers,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_unexpected_errors_are_a_logged_500_without_internals(
    small_app: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="outbox.api"):
        resp = await small_app.get("/boom?token=abc")
    assert (resp.status_code, resp.json()) == (500, {"detail": "internal server error"})
    assert "hunter2" not in resp.text
    [record] = [r for r in caplog.records if r.name == "outbox.api"]
    assert record.exc_info is not None and "GET /boom" in record.getMessage()
    assert "token=abc" not in record.getMessage()


async def test_database_unavailable_is_a_503(small_app: httpx.AsyncClient) -> None:
    resp = await small_app.get("/db")
    assert resp.status_code == 503
    assert resp.json() == {"detail": "database unavailable, try again later"}


async def test_unknown_routes_and_methods_are_json(small_app: httpx.AsyncClient) -> None:
    resp = await small_app.get("/nowhere")
    assert (resp.status_code, resp.json()) == (404, {"detail": "Not Found"})
    resp = await small_app.delete("/echo")
    assert (resp.status_code, resp.json()) == (405, {"detail": "Method Not Allowed"})


async def test_body_size_cap_declared_and_streamed(small_app: httpx.AsyncClient) -> None:
    ok = json.dumps({"since": "2024-01-15T10:30:00"}).encode()
    resp = await small_app.post("/echo", content=ok)
    assert resp.status_code == 200 and resp.json()["since"] == "2024-01-15T10:30:00+00:00"

    big = json.dumps({"since": "2024-01-15T10:30:00", "pad": "x" * 2000}).encode()
    resp = await small_app.post("/echo", content=big)
    assert resp.status_code == 413
    assert resp.json() == {"detail": "request body is larger than 1024 bytes"}

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit is enforced while reading.
        for _ in range(10):
            yield b" " * 200
        yield ok

    resp = await small_app.post("/echo", content=chunks())
    assert resp.status_code == 413
