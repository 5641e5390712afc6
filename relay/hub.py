"""The WebSocket hub: fan every batch out to every connected client.

No client can stall the others. ``publish`` is synchronous and never waits:
it appends the already-encoded frames (``Event.frame``, the same string for
every client) to each matching client's bounded queue and lets the client
send (see :class:`Client`: at once if its socket has room, else in a task of
its own). A client whose queue grows past ``ws_max_queue`` frames or
``ws_max_queue_bytes`` is dropped at once: its queue is freed, it leaves the
registry, and its connection handler closes it with 1013 so it can resume
from its last cursor.

Clients with the same filter share the work of filtering a batch: the
matching ``(id, frame)`` list is built once per distinct filter per batch and
appended to each of those clients' queues.

The hub knows nothing of ASGI: a client's handler (api/ws.py) gives
``go_live`` a ``send(text)`` coroutine function and waits on ``Client.closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from outbox.events import Matcher
from outbox.relay.config import HubSettings
from outbox.relay.feed import Batch
from outbox.relay.metrics import Metrics
from outbox.tokens import is_live

log = logging.getLogger("outbox.hub")

# Close codes (RFC 6455 and the IANA registry).
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013

# A sender hands this many frames to the socket in a row before it yields,
# so one client with a long backlog cannot hold the event loop for long.
_SEND_BURST = 256

Item = tuple[int, str]  # (event id or 0 for a control reply, the text frame)


Send = Callable[[str], Awaitable[None]]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], pending: Any) -> Generator[Any, Any, None]:
    """Finish, inside a task, a coroutine that was started eagerly and suspended.

    What Python 3.12's eager tasks do: pass each future the coroutine waits on
    up to the task, and the task's answer (a value or an exception) back down.
    """
    while True:
        try:
            answer = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                pending = coro.send(answer)
            except StopIteration:
                return


async def _finish(coro: Coroutine[Any, Any, None], pending: Any) -> None:
    await _resume(coro, pending)


class Client:
    """One connected socket: its filter, its bounded queue and its close state.

    Sending is eager: when frames arrive and no send is in flight, the client
    starts sending at once, in the caller's stack. An ASGI send to a socket
    whose buffers have room completes without ever suspending, so the usual
    case costs no task switch at all (that is what keeps the fan-out close to
    a bare loop of sends). Only a send that has to wait — the socket is
    backed up — is handed to a task of its own, and frames queue behind it
    until that task has drained them or the bound is hit.
    """

    __slots__ = (
        "_flushing",
        "_hub",
        "_send",
        "allowed",
        "close_code",
        "close_reason",
        "closed",
        "matcher",
        "nbytes",
        "queue",
        "skip",
        "token",
    )

    def __init__(self, hub: Hub, token: str, matcher: Matcher) -> None:
        self._hub = hub
        self.token = token
        self.matcher = matcher
        # What the token may see (a feed token's patterns); None: everything.
        self.allowed: Matcher | None = None
        self.queue: deque[Item] = deque()
        self.nbytes = 0
        # Ids a resume's catch-up already sent that the relay has yet to
        # publish: dropped from the live stream when they come by.
        self.skip: set[int] = set()
        self.closed = asyncio.Event()
        self.close_code = 1000
        self.close_reason = ""
        self._send: Send | None = None  # None while buffering (before go_live)
        self._flushing: asyncio.Task[None] | None = None

    def send_control(self, text: str) -> None:
        """Queue a reply (pong, subscribed, error) behind the events already queued.

        Replies count against the same bound as events: a client that sends
        requests and never reads the answers is dropped like a slow reader.
        """
        if self.closed.is_set():
            return
        self.queue.append((0, text))
        self.nbytes += len(text)
        if self._hub.over_bound(self):
            self._hub.drop_laggard(self)
            return
        self.kick()

    def go_live(self, send: Send, already_sent: set[int] | None = None) -> None:
        """Start sending; after a resume's catch-up, first drop what it already sent.

        Those buffered now leave the queue; the others the relay has not
        read yet (it may lag behind the catch-up's reads), so they are
        skipped when published.
        """
        if already_sent:
            kept = []
            for item in self.queue:
                if item[0] in already_sent:
                    already_sent.discard(item[0])
                else:
                    kept.append(item)
            self.queue.clear()
            self.queue.extend(kept)
            self.nbytes = sum(len(f) for _, f in kept)
            self.skip = already_sent
        self._send = send
        self.kick()

    def kick(self) -> None:
        """Send what is queued, now if the socket takes it, else in a task."""
        if self._flushing is not None or self._send is None or not self.queue:
            return
        if self.closed.is_set():
            return
        coro = self._flush(self._send)
        try:
            pending = coro.send(None)
        except StopIteration:
            return  # everything went out without waiting
        except Exception as exc:
            self._failed(exc)
            return
        task = asyncio.get_running_loop().create_task(_finish(coro, pending))
        self._flushing = task
        self._hub._senders += 1
        task.add_done_callback(self._flushed)

    async def _flush(self, send: Send) -> None:
        queue = self.queue
        burst = 0
        while queue:
            _, frame = queue.popleft()
            self.nbytes -= len(frame)
            await send(frame)
            burst += 1
            if burst >= _SEND_BURST:
                # A long backlog: let the loop serve others, go on in a task.
                burst = 0
                await asyncio.sleep(0)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing = None
        self._hub._senders -= 1
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(exc)
        else:
            self.kick()  # frames that arrived after the task's last look

    def _failed(self, exc: BaseException) -> None:
        # Usually the peer went away mid-send; the connection handler sees
        # the socket's state and does not try to send a close frame then.
        log.debug("WebSocket send failed: %r", exc)
        self.close(1011, "send failed")

    def close(self, code: int, reason: str) -> None:
        """Leave the hub now; the connection handler sends the close frame."""
        if self.closed.is_set():
            return
        self.close_code, self.close_reason = code, reason
        self.queue.clear()
        self.nbytes = 0
        self._hub._clients.pop(self, None)
        if self._flushing is not None:
            self._flushing.cancel()
        self.closed.set()

    async def wait_sent(self) -> None:
        """After :meth:`close`: wait until no send of this client is in flight."""
        task = self._flushing
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)


class Hub:
    """Registry of connected clients and the fan-out of each batch to them."""

    def __init__(
        self, settings: HubSettings, metrics: Metrics, *, revoke_check_interval: float = 2.0
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.revoke_check_interval = revoke_check_interval
        # A dict keeps registration order and gives O(1) removal.
        self._clients: dict[Client, None] = {}
        self._senders = 0
        self._stopping = asyncio.Event()
        metrics.gauge(
            "outbox_ws_clients", "Connected WebSocket clients", lambda: float(len(self._clients))
        )

    @property
    def client_count(self) -> int:
        """Registered clients (buffering or live)."""
        return len(self._clients)

    @property
    def sender_count(self) -> int:
        """Sends waiting in tasks of their own (backed-up sockets); 0 when idle."""
        return self._senders

    @property
    def queued(self) -> int:
        """Frames waiting in all clients' queues."""
        return sum(len(c.queue) for c in self._clients)

    def register(self, token: str, matcher: Matcher) -> Client:
        """Start buffering every later batch for a new client."""
        client = Client(self, token, matcher)
        if self._stopping.is_set():
            client.close(GOING_AWAY, "server shutting down")
        else:
            self._clients[client] = None
        return client

    def unregister(self, client: Client) -> None:
        """The connection is gone: free its queue and registration."""
        client.close(client.close_code, client.close_reason)

    def publish(self, batch: Batch) -> None:
        """Queue ``batch`` for every client whose filter matches; never blocks."""
        events = batch.events
        if not events or not self._clients:
            return
        max_frames = self.settings.ws_max_queue
        max_bytes = self.settings.ws_max_queue_bytes
        groups: dict[tuple[str, ...], tuple[list[Item], int]] = {}
        queued = 0
        laggards: list[Client] = []
        # A copy: a send that fails closes its client, which leaves the dict.
        for client in tuple(self._clients):
            matcher = client.matcher
            group = groups.get(matcher.patterns)
            if group is None:
                items = [(e.id, e.frame) for e in events if matcher(e.type)]
                group = groups[matcher.patterns] = (items, sum(len(f) for _, f in items))
            items, size = group
            if client.skip:
                items = [item for item in items if item[0] not in client.skip]
                size = sum(len(f) for _, f in items)
                # The relay publishes each event once: no need to look for it again.
                client.skip.difference_update(e.id for e in events)
            if not items:
                continue
            client.queue.extend(items)
            client.nbytes += size
            if len(client.queue) > max_frames or client.nbytes > max_bytes:
                laggards.append(client)
                continue
            queued += len(items)
            client.kick()
        for client in laggards:
            self.drop_laggard(client)
        if queued:
            self.metrics.ws_messages.inc(queued)

    def over_bound(self, client: Client) -> bool:
        """Has ``client``'s queue (events and replies alike) passed its bound?"""
        return (
            len(client.queue) > self.settings.ws_max_queue
            or client.nbytes > self.settings.ws_max_queue_bytes
        )

    def drop_laggard(self, client: Client) -> None:
        """Close a client that does not read fast enough (1013, resume later)."""
        log.info("dropping a WebSocket client %d frames behind", len(client.queue))
        client.close(
            TRY_AGAIN_LATER,
            f"too far behind (more than {self.settings.ws_max_queue} frames or "
            f"{self.settings.ws_max_queue_bytes} bytes queued); resume with your last cursor",
        )
        self.metrics.ws_dropped.inc()

    async def run(self, pool: AsyncConnectionPool[Any]) -> None:
        """Background duty: close the sockets of revoked tokens within seconds."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.revoke_check_interval)
            if self._stopping.is_set():
                break
            try:
                await self.close_revoked(pool)
            except (psycopg.Error, PoolTimeout) as exc:
                # The database being away must not take the live feed down
                # with it; the next round tries again.
                log.warning("token revocation check failed: %s", exc)

    async def close_revoked(self, pool: AsyncConnectionPool[Any]) -> int:
        """Close every socket whose token is no longer live; returns how many."""
        names = {c.token for c in self._clients if c.token != "bootstrap"}
        if not names:
            return 0
        async with pool.connection() as conn:
            revoked = {name for name in names if not await is_live(conn, name)}
        doomed = [c for c in self._clients if c.token in revoked]
        for client in doomed:
            client.close(POLICY_VIOLATION, "Token revoked")
        return len(doomed)

    async def stop(self) -> None:
        """Close every client (1001) and end :meth:`run`."""
        self._stopping.set()
        for client in list(self._clients):
            client.close(GOING_AWAY, "server shutting down")
