"""Placeholder: routes of api/ws.py are added by its issue."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
