"""WebSocket clients that resume: the consumers the oracle speaks for.

A :class:`ResumingClient` keeps the ``cursor`` of the last message it
processed and, whenever its socket ends (server killed, shut down, 1013,
a deliberate hang-up), reconnects with ``since=`` that cursor, to the next
server in ``urls`` (a list the test may change while it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

TOKEN = "test-token"


@dataclass
class ResumingClient:
    name: str
    urls: list[str]  # ws://host:port/ws of the servers it may use, tried in turn
    token: str = TOKEN
    drop_every: int | None = None  # hang up after this many events (at a batch end), resume
    cursor: str | None = None
    seen: set[int] = field(default_factory=set)
    bodies: dict[int, int] = field(default_factory=dict)  # id -> hash of the sorted payload
    bad: list[str] = field(default_factory=list)
    connects: int = 0
    closes: list[int | str | None] = field(default_factory=list)  # close codes, or errors
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            url = self.urls[self.connects % len(self.urls)]
            self.connects += 1
            query = {"token": self.token}
            if self.cursor is not None:
                query["since"] = self.cursor
            try:
                async with connect(
                    f"{url}?{urlencode(query)}",
                    max_size=None,
                    compression=None,
                    open_timeout=5,
                    close_timeout=2,
                ) as ws:
                    await self._read(ws)
                    self.closes.append(ws.close_code)
            except (OSError, WebSocketException, TimeoutError) as exc:
                self.closes.append(type(exc).__name__)
            if not self._stop.is_set():
                # Reconnect pacing, as a real client would; not synchronization.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=0.1)

    async def _read(self, ws: object) -> None:
        from websockets.asyncio.client import ClientConnection

        assert isinstance(ws, ClientConnection)
        got = 0
        stopper = asyncio.create_task(self._stop.wait())
        try:
            while True:
                recv = asyncio.create_task(ws.recv())
                done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    with contextlib.suppress(BaseException):
                        await recv
                    return
                msg = json.loads(recv.result())
                if msg.get("type") == "connection":
                    # Without since=, the connection cursor is the relay's
                    # position: resuming from it later misses nothing.
                    if self.cursor is None:
                        self.cursor = msg["cursor"]
                    continue
                if msg.get("type") == "error":
                    if msg.get("code") not in ("unavailable",):
                        self.bad.append(f"{self.name}: error message {msg}")
                    continue
                if "id" not in msg:
                    continue
                eid = int(msg["id"])
                body = hash(json.dumps(msg["payload"], sort_keys=True))
                if self.bodies.setdefault(eid, body) != body:
                    self.bad.append(f"{self.name}: event {eid} repeated with another payload")
                self.seen.add(eid)
                advanced = msg["cursor"] != self.cursor
                self.cursor = msg["cursor"]
                got += 1
                if self.drop_every and got >= self.drop_every and advanced:
                    # Hang up where the cursor moved: within a batch every event
                    # carries the batch's start cursor, so a client that always
                    # left mid-batch would be sent that batch again forever.
                    return
        finally:
            stopper.cancel()


@contextlib.asynccontextmanager
async def running_clients(clients: Iterable[ResumingClient]) -> AsyncIterator[None]:
    """Run the clients as tasks; stop and await them on exit."""
    clients = list(clients)
    tasks = [asyncio.create_task(c.run(), name=f"ws-{c.name}") for c in clients]
    try:
        yield
    finally:
        for c in clients:
            c.stop()
        done, pending = await asyncio.wait(tasks, timeout=10)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]


def connected(clients: Iterable[ResumingClient]) -> bool:
    """True once every client has a cursor (its first connection was accepted)."""
    return all(c.cursor is not None for c in clients)
