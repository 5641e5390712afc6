"""The Starlette app: REST API + ``/ws`` + the page, over one service.

The app owns nothing long-running: :class:`outbox.relay.service.Service`
(the composition root) builds and runs the relay, the hub, the sender and
the sinks, and ``outbox.cli.server`` starts the service before uvicorn
serves and stops it after uvicorn has closed its connections. The handlers
reach the service and the settings as ``request.app.state.outbox``
(api/state.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware

from outbox.api.config import Settings
from outbox.api.state import AppState

if TYPE_CHECKING:
    from outbox.relay.service import Service


def create_app(settings: Settings, service: Service | None = None) -> Starlette:
    """The app for ``service`` (None: the routes alone, e.g. for /openapi.json)."""
    from outbox.api import errors, events, health, openapi, pages, sinks, webhooks, whoami, ws

    routes = [
        *health.routes,
        *webhooks.routes,
        *sinks.routes,
        *events.routes,
        *whoami.routes,
        *ws.routes,
        *pages.routes,
        *openapi.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ws.RawSend), *errors.middleware(settings.api)],
        exception_handlers=errors.exception_handlers,
    )
    if service is not None:
        app.state.outbox = AppState(settings, service)
        events.export_database_gauges(app.state.outbox)
    return app
