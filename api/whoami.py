"""``GET /whoami``: what the presented token may do.

The console asks this once and shows only what the token may use: with a
``read`` token every view and no write action, with a ``feed`` token only
the live feed (limited to ``events`` when the token has patterns). Every
valid token may ask, whatever its scope.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from outbox.api.endpoint import Doc, json_response, require_token
from outbox.api.schemas import WhoAmI
from outbox.tokens import Principal


def scope_of(principal: Principal) -> WhoAmI:
    """What a token is called and may do."""
    events = list(principal.events) if principal.events is not None else None
    return WhoAmI.model_validate(
        {"name": principal.name, "scope": principal.scope, "events": events}
    )


async def whoami(request: Request) -> Response:
    principal = await require_token(request)
    return json_response(scope_of(principal))


whoami.openapi_doc = Doc(  # type: ignore[attr-defined]
    "The presented token's name and scope",
    {200: WhoAmI},
    description="scope: admin (everything), read (every GET, /ws, /events) or feed "
    "(/ws and /events only, limited to events when given). Clients such as the "
    "console use it to offer only what the token may do.",
)

routes: list[BaseRoute] = [Route("/whoami", whoami, methods=["GET"])]
