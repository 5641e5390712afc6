"""Placeholder: routes of api/webhooks.py are added by its issue."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
