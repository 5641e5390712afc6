"""Helpers for the sink tests: the brokers on loopback, what a stream or a
queue holds, and the sink oracle.

The oracle (:func:`judge_stream`): every committed event that matches the
sink is in the broker, in commit order, no rolled-back event is; JetStream
holds each exactly once, AMQP at least once with the same ``message_id``
(a repeat carries the same body). "In commit order" is checked as the order
of first appearance: events of one transaction together, transactions in
the order the feed emits them (by their largest id, see relay/feed.py),
which for the harness's writers is the order of their commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port
from tests.support.waiting import wait_for

NATS_URL = os.environ.get("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("OUTBOX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _answers(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def need_nats() -> None:
    if not _answers("127.0.0.1", 4222):
        pytest.skip("no NATS server answers on 127.0.0.1:4222 (.ci/run starts one)")


def need_amqp() -> None:
    if not _answers("127.0.0.1", 5672):
        pytest.skip("no RabbitMQ answers on 127.0.0.1:5672 (.ci/run starts one)")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class NoBroker:
    """A publisher that never reaches a broker (for tests about everything else)."""

    async def connect(self) -> None:
        return None

    async def publish(self, messages: Any) -> int:
        return 0

    async def close(self) -> None:
        return None


# --- JetStream -----------------------------------------------------------------


@dataclass
class Received:
    """One message as a consumer saw it."""

    msg_id: str
    subject: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def event_id(self) -> int:
        return int(self.msg_id.removeprefix("evt_"))


@contextlib.asynccontextmanager
async def jetstream(url: str = NATS_URL) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        yield nc.jetstream(timeout=5)
    finally:
        await nc.close()


async def stream_contents(url: str, stream: str) -> list[Received]:
    """Everything the stream holds, in stream order (sequence by sequence)."""
    import nats.js.errors

    out: list[Received] = []
    async with jetstream(url) as js:
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        last = info.state.last_seq
        first = info.state.first_seq
        if info.state.messages == 0:
            return []
        sub = await js.pull_subscribe("", durable=None, stream=stream, config=_consumer_config())
        try:
            got = 0
            while got < info.state.messages:
                msgs = await sub.fetch(min(1000, info.state.messages - got), timeout=5)
                for m in msgs:
                    out.append(_received(m.subject, dict(m.headers or {}), m.data))
                got += len(msgs)
        finally:
            await sub.unsubscribe()
        assert out, (first, last)
    return out


def _consumer_config() -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30
    )


def _received(subject: str, headers: dict[str, str], data: bytes) -> Received:
    return Received(headers.get("Outbox-Event-Id", ""), subject, headers, json.loads(data))


async def delete_stream(url: str, stream: str) -> None:
    with contextlib.suppress(Exception):
        async with jetstream(url) as js:
            await js.delete_stream(stream)


class PrivateNats:
    """A nats-server of our own on a free loopback port, with its own store:
    one we may stop and start (the shared one on 4222 is everyone's).

    ``authorization`` is a nats-server config block (users, permissions);
    with it the server runs from a config file."""

    def __init__(self, authorization: str | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-nats-"))
        self.url = f"nats://127.0.0.1:{self.port}"
        self.authorization = authorization
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        if self.authorization is None:
            args = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "js")]
        else:
            conf = self.dir / "server.conf"
            conf.write_text(
                f"listen: 127.0.0.1:{self.port}\n"
                f"jetstream {{ store_dir: {json.dumps(str(self.dir / 'js'))} }}\n"
                f"authorization {{ {self.authorization} }}\n"
            )
            args = ["-c", str(conf)]
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([NATS_SERVER, *args], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    async def wait_ready(self, timeout: float = 10) -> None:
        await wait_for(lambda: _answers("127.0.0.1", self.port), timeout=timeout, what="nats up")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=15)

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_nats(authorization: str | None = None) -> Iterator[PrivateNats]:
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server is not installed")
    server = PrivateNats(authorization)
    try:
        server.start()
        yield server
    finally:
        server.close()


class SlowProxy:
    """127.0.0.1:port -> a broker, holding every chunk ``delay`` seconds in
    each direction (in order): a slow broker or a slow link, as a sink sees it."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target = ("127.0.0.1", target_port)
        self.delay = delay
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, scheme: str = "nats", userinfo: str = "", path: str = "") -> str:
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            t = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        # A queue keeps the order while each chunk waits its own delay.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the injected delay itself
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await src.read(65536):
                await queue.put((loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            dst.transport.abort()


# --- RabbitMQ --------------------------------------------------------------------


@dataclass
class Queue:
    """A server-named exclusive queue bound to an exchange; collects what arrives."""

    name: str = ""
    received: list[Received] = field(default_factory=list)


@contextlib.asynccontextmanager
async def amqp_queue(exchange: str, binding: str, url: str = AMQP_URL) -> AsyncIterator[Queue]:
    import aio_pika

    conn = await aio_pika.connect(url, timeout=5)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue("", exclusive=True)
        ex = await channel.get_exchange(exchange) if exchange else channel.default_exchange
        if exchange:
            await queue.bind(ex, binding)
        q = Queue(queue.name)

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
            headers["message_id"] = msg.message_id or ""
            headers["delivery_mode"] = str(int(msg.delivery_mode or 0))
            q.received.append(
                Received(msg.message_id or "", msg.routing_key or "", headers, json.loads(msg.body))
            )
            await msg.ack()

        await queue.consume(on_message)
        yield q
    finally:
        await conn.close()


# --- the oracle ------------------------------------------------------------------


@dataclass
class StreamVerdict:
    expected: int
    received: int
    repeats: int
    missing: list[int]
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.violations


def judge_stream(
    received: list[Received],
    committed: dict[int, tuple[str, Any]],
    rolled_back: set[int],
    matches: Any,
    order: list[int],
    *,
    exactly_once: bool,
) -> StreamVerdict:
    """See the module docstring. ``order`` is the commit order of every
    committed event id (the ledger's), ``matches(event_type)`` the sink's filter."""
    violations: list[str] = []
    first: dict[int, Received] = {}
    sequence: list[int] = []
    repeats = 0
    for r in received:
        try:
            eid = r.event_id
        except ValueError:
            violations.append(f"message without an evt_ id: {r.headers}")
            continue
        if eid in first:
            repeats += 1
            if r.body != first[eid].body:
                violations.append(f"evt_{eid} repeated with a different body")
            continue
        first[eid] = r
        sequence.append(eid)
        if eid in rolled_back:
            violations.append(f"rolled-back event {eid} was published")
        elif eid not in committed:
            violations.append(f"evt_{eid} is not an event of this run")
        else:
            etype, payload = committed[eid]
            if r.body.get("data") != payload or r.body.get("type") != etype:
                violations.append(f"evt_{eid}: body is not the committed event")
            if r.headers.get("Outbox-Event-Type") != etype:
                violations.append(f"evt_{eid}: Outbox-Event-Type header is wrong")
    if exactly_once and repeats:
        violations.append(f"{repeats} repeated messages in a stream that de-duplicates")
    want = [eid for eid in order if eid in committed and matches(committed[eid][0])]
    got = [eid for eid in sequence if eid in committed]
    missing = sorted(set(want) - set(got))
    # Commit order: the events that arrived come in the order they committed.
    rank = {eid: i for i, eid in enumerate(want)}
    ranks = [rank[e] for e in got if e in rank]
    for a, b in itertools.pairwise(ranks):
        if b < a:
            violations.append(f"out of commit order: evt_{want[a]} before evt_{want[b]}")
            break
    return StreamVerdict(len(want), len(received), repeats, missing, violations)


async def settle_stream(
    fetch: Any,
    committed: dict[int, tuple[str, Any]],
    rolled_back: set[int],
    matches: Any,
    order: list[int],
    *,
    exactly_once: bool,
    timeout: float = 30.0,
) -> StreamVerdict:
    """Wait (up to ``timeout``) until nothing is missing, then judge for good."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        verdict = judge_stream(
            await fetch(), committed, rolled_back, matches, order, exactly_once=exactly_once
        )
        if verdict.violations:
            raise AssertionError("sink oracle violated: " + "; ".join(verdict.violations[:10]))
        if not verdict.missing:
            return verdict
        if loop.time() > deadline:
            raise AssertionError(
                f"still missing after {timeout}s: {len(verdict.missing)} of {verdict.expected} "
                f"({verdict.missing[:10]}...)"
            )
        await asyncio.sleep(0.1)  # poll interval of the wait
