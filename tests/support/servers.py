"""The app under a real uvicorn on loopback (a pytest plugin for ``settings``).

Plain helpers (``free_port``, ``serve_app``, ``RunningServer``) are imported by
test files; the ``settings`` fixture is registered from the root
``tests/conftest.py`` and, being built on ``db_url``, is a database fixture.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outbox.cli.server import Running as RunningServer

__all__ = ["RunningServer", "free_port", "loopback_nets", "serve_app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_app(settings: Any, *, port: int = 0) -> AsyncIterator[RunningServer]:
    """The whole app under a real uvicorn on a loopback port (0: any free one),
    set up exactly as ``outbox serve`` sets it up (outbox.cli.server)."""
    from outbox.cli.server import running

    async with running(settings.replace(host="127.0.0.1", port=port)) as server:
        yield server


def loopback_nets() -> tuple[Any, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.fixture
def settings(db_url: str) -> Any:
    """Settings for a test server on this test's database (fast polls, short timeouts)."""
    from outbox.api.config import Settings

    return Settings.load(
        database_url=db_url,
        api_token="test-token",
        poll_interval=0.5,
        webhook_timeout=5.0,
        webhook_allow_networks=loopback_nets(),
    )
