"""Placeholder: routes of api/events.py are added by its issue."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
