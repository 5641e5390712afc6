"""Placeholder: routes of api/health.py are added by its issue."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
