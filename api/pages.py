"""Placeholder: routes of api/pages.py are added by its issue."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
