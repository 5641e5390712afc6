"""The admin live feed page at ``/`` and its static assets under ``/static``.

Plain HTML, CSS and JavaScript from ``api/static``: no build step, nothing
fetched from elsewhere. The page itself needs no token (it holds no data);
it asks for one and sends it with every API call and on ``/ws``.

A strict Content-Security-Policy goes with every page response: scripts and
styles only from this origin, no inline code, and network access only to
this origin's HTTP and WebSocket endpoints.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (ETag / Last-Modified keep that cheap): an
    # upgraded server must never run against a stale cached script.
    "Cache-Control": "no-cache",
}


def _csp(request: Request) -> str:
    host = request.headers.get("host", "")
    # 'self' covers ws: in current browsers; the explicit ws(s) origin keeps
    # older ones working.
    ws = f" ws://{host} wss://{host}" if host else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{ws}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


async def index(request: Request) -> Response:
    response = FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")
    response.headers.update(_SECURITY_HEADERS)
    response.headers["Content-Security-Policy"] = _csp(request)
    return response


class _Headers:
    """Adds the security headers to every static response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET", "HEAD"], name="page"),
    Mount("/static", app=_Headers(StaticFiles(directory=STATIC_DIR)), name="static"),
]
