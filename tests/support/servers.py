"""The app under a real uvicorn on loopback (a pytest plugin for ``settings``).

Plain helpers (``free_port``, ``serve_app``, ``RunningServer``) are imported by
test files; the ``settings`` fixture is registered from the root
``tests/conftest.py`` and, being built on ``db_url``, is a database fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"


@contextlib.asynccontextmanager
async def serve_app(
    settings: Any, *, startup_timeout: float = 15.0
) -> AsyncIterator[RunningServer]:
    """Run ``create_app(settings)`` under a real uvicorn on a loopback port."""
    import dataclasses

    import uvicorn

    from outbox.api.app import create_app
    from outbox.api.ws import uvicorn_ws_options

    port = free_port()
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **uvicorn_ws_options(settings),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn-test")
    try:
        await wait_for(
            lambda: server.started or task.done(), timeout=startup_timeout, what="uvicorn startup"
        )
        if task.done():
            task.result()
            raise AssertionError("uvicorn exited during startup")
        yield RunningServer(app, port)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=15)
        except TimeoutError:
            task.cancel()


def loopback_nets() -> tuple[Any, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.fixture
def settings(db_url: str) -> Any:
    """Settings for a test server on this test's database (fast polls, short timeouts)."""
    from outbox.relay.config import Settings

    return Settings(
        database_url=db_url,
        api_token="test-token",
        poll_interval=0.5,
        webhook_timeout=5.0,
        webhook_allow_networks=loopback_nets(),
    )
