"""NATS JetStream sinks (``kind: nats``), on nats-py.

Each message is published to JetStream with ``Nats-Msg-Id: evt_<id>``: the
stream drops a repeat of an id it stored within its duplicate window (2
minutes unless the stream says otherwise), so the re-publish after a crash
or a lost acknowledgement leaves one copy. A batch is pipelined
(``publish_async``: every message written, then every PubAck awaited) on one
connection, so the stream stores it in order; a batch is acknowledged when
every message has its PubAck.

With ``stream`` set, every message also carries ``Nats-Expected-Stream``
(a subject captured by another stream is refused rather than stored there),
and the stream is created at connect when it does not exist, capturing the
subject template's fixed prefix (``outbox.{type}`` -> ``outbox.>``).

The client's own reconnect is off: a lost connection fails the batch, and
the worker's retry connects again and re-publishes it (the stream drops
what it already had).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from outbox.relay.sinks.base import (
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    Message,
    SinkConfig,
    Template,
    redact,
)

CONNECT_TIMEOUT = 5
# A batch whose PubAcks have not all come back by then has failed (and is
# re-published: the stream drops what it already stored).
ACK_TIMEOUT = 10.0
# Room for a whole batch in flight (the worker's batches are smaller).
MAX_PENDING = 10_000


class NatsPublisher:
    """:class:`outbox.relay.sinks.base.Publisher` for JetStream."""

    def __init__(self, sink: SinkConfig, *, ack_timeout: float = ACK_TIMEOUT) -> None:
        self.sink = sink
        self.ack_timeout = ack_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        # What the server said asynchronously (e.g. a permissions violation,
        # which leaves the publish unanswered): part of the next error.
        self._async_error: str | None = None
        self._inflight: list[asyncio.Future[Any]] = []

    async def _on_error(self, exc: Exception) -> None:
        self._async_error = _describe(exc)
        # A permissions violation is told here and nowhere else (the publish
        # is never answered): fail the batch now rather than at its timeout.
        if "permissions violation" in self._async_error.lower():
            said = _ServerSaid(self._async_error)
            for f in self._inflight:
                if not f.done():
                    f.set_exception(said)

    async def _acks(self, futures: list[asyncio.Future[Any]]) -> list[Any]:
        """Every PubAck, or _ServerSaid when the server refused (``_on_error``
        fails the futures in flight: no extra task per batch).

        Awaited one after the other rather than gathered: the PubAcks come
        back in order, so most are done when their turn comes and cost no
        suspension, and a batch needs no gathering future with a callback
        per message (3% of the serve process's CPU in B6's drain). The first
        failure raises, as gather's would."""
        self._inflight = futures
        try:
            return [await f for f in futures]
        finally:
            self._inflight = []

    async def _on_disconnect(self) -> None:
        """The connection is gone: what is in flight will never be acked."""
        lost = BrokerUnavailable("the connection to the NATS server was lost")
        for f in self._inflight:
            if not f.done():
                f.set_exception(lost)

    async def connect(self) -> None:
        await self.close()
        self._async_error = None
        try:
            # Bounded here: with a server that refuses, nats-py's connect
            # keeps trying for ever (its error callback hears each refusal).
            async with asyncio.timeout(CONNECT_TIMEOUT + 1):
                nc = await nats.connect(
                    self.sink.url,
                    name=f"outbox sink {self.sink.name}",
                    allow_reconnect=False,
                    connect_timeout=CONNECT_TIMEOUT,
                    max_reconnect_attempts=0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    closed_cb=self._on_disconnect,
                )
        except TimeoutError:
            said = f" ({self._async_error})" if self._async_error else ""
            raise BrokerUnavailable(
                redact(f"cannot connect: no NATS server answered{said}", self.sink.url)
            ) from None
        except Exception as exc:
            raise self._error(exc, "cannot connect") from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=CONNECT_TIMEOUT, publish_async_max_pending=MAX_PENDING)
        if self.sink.stream:
            await self._ensure_stream(self.sink.stream)

    async def _ensure_stream(self, name: str) -> None:
        assert self._js is not None
        try:
            await self._js.stream_info(name)
            return
        except nats.js.errors.NotFoundError:
            pass
        except Exception as exc:
            raise self._error(exc, f"stream {name}") from exc
        subject = Template(self.sink.destination_template).stream_subject()
        try:
            await self._js.add_stream(name=name, subjects=[subject])
        except Exception as exc:
            raise self._error(exc, f"cannot create stream {name} for {subject}") from exc

    async def publish(self, messages: Sequence[Message]) -> int:
        if self._js is None or self._nc is None or not self._nc.is_connected:
            await self.connect()
        js = self._js
        assert js is not None
        stream = self.sink.stream or None
        futures: list[asyncio.Future[Any]] = []
        self._async_error = None
        try:
            # The writes are bounded too: on a connection that is going away
            # nats-py can wait on its flusher for ever.
            async with asyncio.timeout(self.ack_timeout):
                for m in messages:
                    headers = {"Nats-Msg-Id": m.msg_id, **m.headers}
                    futures.append(
                        await js.publish_async(
                            m.destination, m.body, headers=headers, stream=stream
                        )
                    )
                acks = await self._acks(futures)
        except BaseException as exc:
            for f in futures:
                f.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            # A half-acknowledged connection is not reused: its late acks
            # would land on futures nobody waits for.
            await self.close()
            if isinstance(exc, TimeoutError):
                text = (
                    f"JetStream did not acknowledge {len(messages)} messages "
                    f"within {self.ack_timeout:g}s"
                )
                raise BrokerUnavailable(text) from exc
            if isinstance(exc, _ServerSaid):
                raise BrokerRefused(
                    redact(f"publish refused; the server said: {exc}", self.sink.url)
                ) from None
            raise self._error(exc, "publish") from exc
        return sum(1 for a in acks if a.duplicate)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):  # closing a broken connection
                await asyncio.wait_for(nc.close(), timeout=2)

    def _error(self, exc: BaseException, what: str) -> BrokerError:
        text = redact(f"{what}: {_describe(exc)}", self.sink.url)
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return BrokerRefused(
                redact(f"{what}: no JetStream stream captures the subject", self.sink.url)
            )
        if isinstance(
            exc,
            nats.js.errors.APIError | nats.errors.AuthorizationError | nats.errors.MaxPayloadError,
        ):
            # (A message over the server's max_payload is refused until the
            # server allows more: the sink waits there, it does not skip it.)
            return BrokerRefused(text)
        if isinstance(exc, nats.errors.Error) and "permissions violation" in str(exc).lower():
            return BrokerRefused(text)
        return BrokerUnavailable(text)


class _ServerSaid(Exception):
    """The server refused a publish asynchronously (e.g. a permissions violation)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{exc.description or type(exc).__name__} (code {exc.err_code})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
