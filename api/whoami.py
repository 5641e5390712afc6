"""``GET /whoami``: what the presented token may do.

The console asks this once and shows only what the token may use: with a
``read`` token every view and no write action, with a ``feed`` token only
the live feed. Every valid token is ``admin`` until scoped tokens exist
(CONTRACT.md "Tokens with scopes"); that work fills in :func:`scope_of`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from outbox.api.endpoint import Doc, json_response, require_token
from outbox.api.schemas import WhoAmI


def scope_of(identity: str) -> WhoAmI:
    """The scope of a token identity (``"bootstrap"`` or ``"ID:NAME"``)."""
    name = identity.partition(":")[2] or identity
    return WhoAmI(name=name, scope="admin", events=None)


async def whoami(request: Request) -> Response:
    identity = await require_token(request)
    return json_response(scope_of(identity))


whoami.openapi_doc = Doc(  # type: ignore[attr-defined]
    "The presented token's name and scope",
    {200: WhoAmI},
    description="scope: admin (everything), read (every GET, /ws, /events) or feed "
    "(/ws and /events only, limited to events when given). Clients such as the "
    "console use it to offer only what the token may do.",
)

routes: list[BaseRoute] = [Route("/whoami", whoami, methods=["GET"])]
