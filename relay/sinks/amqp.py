"""RabbitMQ sinks (``kind: amqp``, AMQP 0-9-1), on aio-pika.

Messages are persistent (delivery mode 2), carry ``message_id = evt_<id>``
(consumers de-duplicate by it: AMQP has no broker-side de-duplication) and
``type`` = the event type, and are published on a channel in confirm mode
(``publisher_confirms=True``): a batch is acknowledged when the broker has
confirmed every message of it. The messages of a batch are written in order
on one channel with their confirms awaited together, so the broker receives
them in order.

The exchange must exist (checked at connect with a passive declare; the
default is ``amq.topic``, which always does; ``""`` is the default
exchange, routing straight to the queue named by the routing key). An
unroutable message (no queue bound for its routing key) is dropped by
RabbitMQ and still confirmed: bind the consumer's queue before the sink
starts.

The connection is aio-pika's robust one; a failure still fails the batch
and the worker's retry re-publishes it on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

import aio_pika
import aio_pika.abc
import aio_pika.connection
import aio_pika.exceptions
import aiormq.exceptions

from outbox.relay.sinks.base import (
    DEFAULT_EXCHANGE,
    MAX_ROUTING_KEY,
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    Message,
    SinkConfig,
    redact,
)

CONNECT_TIMEOUT = 5.0
# A batch not confirmed by then has failed (and is published again).
CONFIRM_TIMEOUT = 10.0


class AmqpPublisher:
    """:class:`outbox.relay.sinks.base.Publisher` for RabbitMQ."""

    def __init__(self, sink: SinkConfig, *, confirm_timeout: float = CONFIRM_TIMEOUT) -> None:
        self.sink = sink
        self.confirm_timeout = confirm_timeout
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    @property
    def exchange_name(self) -> str:
        name = self.sink.exchange
        return DEFAULT_EXCHANGE if name is None else name

    async def connect(self) -> None:
        await self.close()
        # What aio_pika.connect_robust does, but holding the connection object
        # when connect() fails: closed here, it is not left to its __del__,
        # which schedules close() on whatever loop is current when the garbage
        # collector gets to it (a coroutine never awaited once that loop ended).
        conn = aio_pika.RobustConnection(
            aio_pika.connection.make_url(self.sink.url),
            client_properties={"connection_name": f"outbox sink {self.sink.name}"},
            reconnect_interval=1,
        )
        try:
            await conn.connect(timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            await _close(conn)
            raise self._error(exc, "cannot connect") from exc
        self._conn = conn
        try:
            channel = await conn.channel(publisher_confirms=True)
            if self.exchange_name == "":
                self._exchange = channel.default_exchange
            else:
                self._exchange = await channel.get_exchange(self.exchange_name, ensure=True)
        except Exception as exc:
            await self.close()
            raise self._error(exc, f"exchange {self.exchange_name!r}") from exc

    async def publish(self, messages: Sequence[Message]) -> int:
        if self._exchange is None or self._conn is None or self._conn.is_closed:
            await self.connect()
        exchange = self._exchange
        assert exchange is not None
        now = datetime.now(UTC)
        pending = [
            exchange.publish(
                aio_pika.Message(
                    m.body,
                    headers=dict(m.headers),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=m.msg_id,
                    type=m.headers.get("Outbox-Event-Type"),
                    timestamp=now,
                ),
                _routing_key(m.destination),
                mandatory=False,
            )
            for m in messages
        ]
        tasks = [asyncio.ensure_future(p) for p in pending]
        try:
            async with asyncio.timeout(self.confirm_timeout):
                await asyncio.gather(*tasks)
        except BaseException as exc:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            await self.close()
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"RabbitMQ did not confirm {len(messages)} messages "
                    f"within {self.confirm_timeout:g}s"
                ) from exc
            raise self._error(exc, "publish") from exc
        return 0

    async def close(self) -> None:
        conn, self._conn, self._exchange = self._conn, None, None
        if conn is not None:
            await _close(conn)

    def _error(self, exc: BaseException, what: str) -> BrokerError:
        text = redact(f"{what}: {_describe(exc)}", self.sink.url)
        refused = (
            aio_pika.exceptions.ChannelNotFoundEntity,
            aiormq.exceptions.ChannelAccessRefused,
            aiormq.exceptions.ProbableAuthenticationError,
            aiormq.exceptions.ConnectionNotAllowed,
            aiormq.exceptions.ChannelPreconditionFailed,
            aio_pika.exceptions.DeliveryError,
        )
        if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
            return BrokerRefused(text)
        if isinstance(exc, refused):
            return BrokerRefused(text)
        return BrokerUnavailable(text)


async def _close(conn: aio_pika.abc.AbstractRobustConnection) -> None:
    if not conn.is_closed:
        with contextlib.suppress(Exception):  # closing a broken connection
            await asyncio.wait_for(conn.close(), timeout=2)


def _routing_key(text: str) -> str:
    """At most 255 bytes (the protocol's limit), cut on a character boundary."""
    raw = text.encode()
    if len(raw) <= MAX_ROUTING_KEY:
        return text
    return raw[:MAX_ROUTING_KEY].decode(errors="ignore")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in text:
        # aiormq drops the broker's reason here; RabbitMQ closes the handshake
        # like this for a virtual host that does not exist or is not allowed.
        return (
            "the broker closed the connection at Connection.Open: the vhost does not "
            "exist or this user may not use it"
        )
    if not text and exc.args:
        text = repr(exc.args[0])
    return text.splitlines()[0] if text else type(exc).__name__
