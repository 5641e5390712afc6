"""B6 sinks: ``outbox.events`` into NATS JetStream (acked) and RabbitMQ (confirmed).

For each broker (JetStream on ``BENCH_NATS_URL``, RabbitMQ on
``BENCH_AMQP_URL``; the machine's servers by default), measured in this order:

1. **throughput**: N events pre-loaded; per repetition, interleaved:
   ``outbox``: a new sink (paused, reading from the cursor before the load,
   into a fresh stream or queue) is activated; ``bare``: the same N messages
   (the same subjects, headers and bodies: ``build_messages`` over the same
   rows) from a plain client loop at the same pipelining as the sink (a
   window of ``OUTBOX_BATCH_SIZE`` messages written, then their acks /
   confirms awaited). One clock for both: the broker's message count
   (stream state / the queue's count, polled every 10 ms), from the first
   message there to the last; the start-up before the first (a sink's
   publisher taking its lock and connecting) is reported apart. The ratio
   is per repetition (each pair run side by side). The machine is shared:
   only the ratios mean much.
2. **latency**: an open-loop writer at 1,000 events/s (one event per
   transaction) for D seconds; a consumer in this process (a NATS
   subscription on the stream's subjects, then the stream's count checked /
   an AMQP queue consumer) records when each event arrives; commit (the
   writer's COMMIT returned) -> arrival, p50/p99.
   Baseline, interleaved: the writer publishes each message itself right
   after its COMMIT (a dual write: the broker's and this machine's cost
   with no relay in between).
3. **backlog**: B events pre-loaded (``--b6-backlog``, default 1,000,000 for
   JetStream; RabbitMQ gets at most 100,000: it holds them in its queue)
   drained by one sink; rate, and the server's RSS sampled every second
   (flat = the last quarter's median minus the first quarter's) and peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.context import Context, interleaved
from bench.payloads import SQL_PAYLOAD
from bench.pg import bench_database
from bench.procs import Server, rss_mb
from bench.report import Metric, ScenarioResult, Target, ratio_metric
from bench.stats import Spread, latency_summary
from bench.system import TOKEN, outbox_server

RATIO_TARGET = Target(">=", 0.8)
P99_TARGET = Target("<=", 20.0)
RSS_TARGET = Target("<", 300)
BATCH = 1000  # OUTBOX_BATCH_SIZE: the sink's read and publish window
CHUNK = 1000
POLL = 0.01
NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
AMQP_BACKLOG_MAX = 100_000

LOAD_TYPE = "bench.sink"
# No event carries the marker: run with n = 0 (generate_series starts at lo >= 1).
LOAD_SQL = sql.SQL(
    "INSERT INTO outbox.events (event_type, payload) SELECT {event_type}, {payload}"
    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g"
).format(event_type=sql.Literal(LOAD_TYPE), payload=SQL_PAYLOAD)


@dataclass(frozen=True)
class Params:
    events: int
    repeats: int
    rate: int
    seconds: float
    backlog: int
    latency_repeats: int


def params(ctx: Context) -> Params:
    if ctx.smoke:
        return Params(
            events=500,
            repeats=1,
            rate=200,
            seconds=1.0,
            backlog=ctx.b6_backlog or 3000,
            latency_repeats=1,
        )
    return Params(
        events=20_000,
        repeats=ctx.reps(3),
        rate=1000,
        seconds=10.0,
        backlog=ctx.b6_backlog or 1_000_000,
        latency_repeats=ctx.reps(2),
    )


async def preload(db_url: str, n: int) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for lo in range(1, n + 1, CHUNK):
            await conn.execute(
                LOAD_SQL, {"n": 0, "marker": "", "lo": lo, "hi": min(n, lo + CHUNK - 1)}
            )
        await conn.execute("VACUUM (ANALYZE) outbox.events")


async def head(db_url: str) -> Any:
    from outbox.relay.feed import head as feed_head

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        return await feed_head(c)


async def messages_after(db_url: str, start: Any, subject: str) -> list[Any]:
    """The messages a sink would publish for the events after ``start``."""
    from outbox.events import Matcher
    from outbox.relay.feed import read_batch
    from outbox.relay.sinks.base import Template, build_messages

    out: list[Any] = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cursor = start
        while True:
            batch = await read_batch(c, cursor, BATCH)
            if not batch.events:
                return out
            out += build_messages(batch.events, Matcher([LOAD_TYPE]), Template(subject))
            cursor = batch.end


Seen = Callable[[int], None]
Stop = Callable[[], Awaitable[None]]


def api(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )


# --- the brokers ---------------------------------------------------------------------


class Broker:
    """One kind: make a destination, count what it holds, publish bare, clean up."""

    kind = ""

    def sink_body(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    async def connect(self) -> None: ...

    async def open(self, name: str) -> None: ...

    async def count(self, name: str) -> int:
        raise NotImplementedError

    async def bare(self, name: str, messages: list[Any]) -> None:
        raise NotImplementedError

    async def consume(self, name: str, seen: Seen) -> Stop:
        raise NotImplementedError

    async def publish_one(self, name: str, m: Any) -> None:
        raise NotImplementedError

    async def drop(self, name: str) -> None: ...

    async def close(self) -> None: ...


class Jetstream(Broker):
    kind = "nats"

    def __init__(self) -> None:
        self.nc: Any = None
        self.js: Any = None

    async def connect(self) -> None:
        import nats

        self.nc = await nats.connect(NATS_URL, connect_timeout=5)
        self.js = self.nc.jetstream(timeout=10, publish_async_max_pending=BATCH * 4)

    def subject(self, name: str) -> str:
        return f"b6{name}.{{type}}"

    def sink_body(self, name: str) -> dict[str, Any]:
        return {"url": NATS_URL, "subject": self.subject(name), "stream": name}

    async def open(self, name: str) -> None:
        await self.js.add_stream(name=name, subjects=[f"b6{name}.>"])

    async def count(self, name: str) -> int:
        return int((await self.js.stream_info(name)).state.messages)

    async def bare(self, name: str, messages: list[Any]) -> None:
        """publish_async a window of BATCH messages, then await their PubAcks."""
        js = self.js
        for i in range(0, len(messages), BATCH):
            futures = [
                await js.publish_async(
                    m.destination, m.body, headers={"Nats-Msg-Id": m.msg_id, **m.headers},
                    stream=name,
                )
                for m in messages[i : i + BATCH]
            ]  # fmt: skip
            await asyncio.gather(*futures)

    async def consume(self, name: str, seen: Seen) -> Stop:
        async def on(msg: Any) -> None:
            seen(int(msg.headers["Outbox-Event-Id"][4:]))

        # A plain subscription on the stream's subjects: the server hands it
        # the message as it stores it (an ordered push consumer stalls under
        # this machine's load); run_latency checks the stream's count after.
        sub = await self.nc.subscribe(f"b6{name}.>", cb=on, pending_msgs_limit=1_000_000)
        return sub.unsubscribe  # type: ignore[no-any-return]

    async def publish_one(self, name: str, m: Any) -> None:
        headers = {"Nats-Msg-Id": m.msg_id, **m.headers}
        await self.js.publish(m.destination, m.body, headers=headers, stream=name)

    async def drop(self, name: str) -> None:
        with contextlib.suppress(Exception):  # gone already
            await self.js.delete_stream(name)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class Rabbit(Broker):
    kind = "amqp"

    def __init__(self) -> None:
        self.conn: Any = None
        self.channel: Any = None
        self.queues: dict[str, Any] = {}

    async def connect(self) -> None:
        import aio_pika

        self.conn = await aio_pika.connect(AMQP_URL, timeout=10)
        self.channel = await self.conn.channel(publisher_confirms=True)

    def sink_body(self, name: str) -> dict[str, Any]:
        return {"url": AMQP_URL, "exchange": "amq.topic", "routing_key": f"b6{name}.{{type}}"}

    async def open(self, name: str) -> None:
        queue = await self.channel.declare_queue(name, auto_delete=False, durable=False)
        await queue.bind("amq.topic", f"b6{name}.#")
        self.queues[name] = queue

    async def count(self, name: str) -> int:
        q = await self.channel.declare_queue(name, passive=True)
        return int(q.declaration_result.message_count)

    async def bare(self, name: str, messages: list[Any]) -> None:
        """A window of BATCH confirmed publishes in flight, then the next."""
        import aio_pika

        exchange = await self.channel.get_exchange("amq.topic")
        for i in range(0, len(messages), BATCH):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            m.body,
                            headers=dict(m.headers),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=m.msg_id,
                        ),
                        m.destination,
                        mandatory=False,
                    )
                    for m in messages[i : i + BATCH]
                )
            )

    async def consume(self, name: str, seen: Seen) -> Stop:
        async def on(msg: Any) -> None:
            seen(int(msg.message_id[4:]))

        tag = await self.queues[name].consume(on, no_ack=True)

        async def stop() -> None:
            await self.queues[name].cancel(tag)

        return stop

    async def publish_one(self, name: str, m: Any) -> None:
        import aio_pika

        exchange = await self.channel.get_exchange("amq.topic", ensure=False)
        message = aio_pika.Message(
            m.body,
            headers=dict(m.headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=m.msg_id,
        )
        await exchange.publish(message, m.destination, mandatory=False)

    async def drop(self, name: str) -> None:
        with contextlib.suppress(Exception):  # gone already
            await self.channel.queue_delete(name)
        self.queues.pop(name, None)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


# --- measurements ----------------------------------------------------------------------


async def wait_count(broker: Broker, name: str, n: int, limit_s: float) -> float:
    """Monotonic time at which ``name`` holds ``n`` messages."""
    deadline = time.monotonic() + limit_s
    while True:
        if await broker.count(name) >= n:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{broker.kind} {name}: fewer than {n} messages after {limit_s}s")
        await asyncio.sleep(POLL)  # the clock's resolution


async def run_outbox(
    http: httpx.AsyncClient, broker: Broker, start: Any, n: int, limit_s: float
) -> dict[str, Any]:
    name = "O" + secrets.token_hex(4)
    await broker.open(name)
    try:
        r = await http.post(
            "/sinks",
            json={
                "name": name,
                "since": start.encode(),
                "is_active": False,
                "event_types": [LOAD_TYPE],
                **broker.sink_body(name),
            },
        )
        r.raise_for_status()
        sink = r.json()
        started = time.monotonic()
        (await http.patch(f"/sinks/{sink['id']}", json={"is_active": True})).raise_for_status()
        t0 = await wait_count(broker, name, 1, limit_s)
        t1 = await wait_count(broker, name, n, limit_s)
        (await http.delete(f"/sinks/{sink['id']}")).raise_for_status()
    finally:
        await broker.drop(name)
    return _rate(n, started, t0, t1)


async def run_bare(broker: Broker, messages: list[Any], limit_s: float) -> dict[str, Any]:
    name = "B" + secrets.token_hex(4)
    await broker.open(name)
    try:
        # The same subjects, in this destination.
        renamed = [_retarget(m, broker, name) for m in messages]
        started = time.monotonic()
        sending = asyncio.create_task(broker.bare(name, renamed))
        try:
            t0 = await wait_count(broker, name, 1, limit_s)
            t1 = await wait_count(broker, name, len(renamed), limit_s)
            await asyncio.wait_for(sending, limit_s)
        finally:
            if not sending.done():
                sending.cancel()
    finally:
        await broker.drop(name)
    return _rate(len(renamed), started, t0, t1)


def _rate(n: int, started: float, first: float, last: float) -> dict[str, Any]:
    """From the first message in the broker to the last: the steady rate, without
    the start-up (a sink's publisher taking its lock and connecting; the bare
    client's first write), which is reported apart."""
    return {
        "events": n,
        "seconds": last - first,
        "rate": (n - 1) / max(last - first, POLL),
        "startup_seconds": first - started,
    }


def _retarget(m: Any, broker: Broker, name: str) -> Any:
    return m._replace(destination=f"b6{name}.{m.destination.split('.', 1)[1]}")


async def run_latency(
    http: httpx.AsyncClient,
    broker: Broker,
    db_url: str,
    p: Params,
    limit_s: float,
    *,
    direct: bool = False,
) -> dict[str, Any]:
    """Commit -> consumer arrival through a sink, or (``direct``) with the
    writer publishing each message itself right after its COMMIT returned:
    the dual write a sink replaces, i.e. what the broker and this machine
    cost before any relay work."""
    from psycopg.types.json import Jsonb

    from outbox.events import Matcher
    from outbox.relay.sinks.base import Template, build_messages

    name = "L" + secrets.token_hex(4)
    await broker.open(name)
    arrived: dict[int, float] = {}
    committed: dict[int, float] = {}
    n = int(p.rate * p.seconds)
    all_in = asyncio.Event()

    def seen(eid: int) -> None:
        arrived.setdefault(eid, time.time())
        if len(arrived) >= n:
            all_in.set()

    stop = await broker.consume(name, seen)
    sink: dict[str, Any] | None = None
    stored = 0
    template = Template(f"b6{name}.{{type}}")
    try:
        if not direct:
            body = {"name": name, "event_types": ["bench.latency"], **broker.sink_body(name)}
            r = await http.post("/sinks", json=body)
            r.raise_for_status()
            sink = r.json()
            await asyncio.sleep(1.5)  # the sink's publisher starts (claim interval 1 s)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(n):
                ahead = t0 + i / p.rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # open-loop pacing of the load
                cur = await c.execute(
                    "SELECT outbox.publish('bench.latency', %s)", (Jsonb({"seq": i}),)
                )
                row = await cur.fetchone()
                assert row is not None
                committed[int(row[0])] = time.time()
                if direct:
                    event = _Latest(int(row[0]), {"seq": i})
                    (m,) = build_messages([event], Matcher(None), template)  # type: ignore[list-item]
                    await broker.publish_one(name, m)
        # The tail: bounded (an event that never arrives shows as received < events).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 30.0)
        if sink is not None:
            (await http.delete(f"/sinks/{sink['id']}")).raise_for_status()
        stored = await broker.count(name)
    finally:
        await stop()
        await broker.drop(name)
    lat = [(arrived[e] - t) * 1000 for e, t in committed.items() if e in arrived]
    return {
        "events": len(committed),
        "stored": stored,
        "received": len(lat),
        "commit_to_arrival_ms": latency_summary(lat),
    }


@dataclass
class _Latest:
    """An event as build_messages reads it (for the direct variant)."""

    id: int
    data: dict[str, Any]
    type: str = "bench.latency"
    key: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def payload_json(self) -> str:
        import json

        return json.dumps(self.data)

    @property
    def created_at(self) -> Any:
        from datetime import UTC, datetime

        return datetime.now(UTC)


async def run_backlog(
    http: httpx.AsyncClient, server: Server, broker: Broker, start: Any, n: int, limit_s: float
) -> dict[str, Any]:
    name = "K" + secrets.token_hex(4)
    await broker.open(name)
    samples: list[tuple[float, float]] = []
    try:
        r = await http.post(
            "/sinks",
            json={
                "name": name,
                "since": start.encode(),
                "event_types": [LOAD_TYPE],
                **broker.sink_body(name),
            },
        )
        r.raise_for_status()
        sink = r.json()
        t0 = time.monotonic()
        deadline = t0 + limit_s
        while True:
            now = time.monotonic()
            samples.append((now - t0, rss_mb(server.pid)))
            if await broker.count(name) >= n:
                break
            if now > deadline:
                raise RuntimeError(f"backlog: fewer than {n} messages after {limit_s}s")
            await asyncio.sleep(0.25 if n < 50_000 else 1.0)  # the RSS sampling interval
        seconds = time.monotonic() - t0
        (await http.delete(f"/sinks/{sink['id']}")).raise_for_status()
    finally:
        await broker.drop(name)
    q = max(1, len(samples) // 4)
    growth = statistics.median(s for _, s in samples[-q:]) - statistics.median(
        s for _, s in samples[:q]
    )
    return {
        "events": n,
        "seconds": seconds,
        "rate": n / seconds,
        "rss_mb_samples": samples,
        "rss_growth_mb": growth,
    }


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult("b6", "sinks: outbox.events into JetStream and RabbitMQ")
    result.params = asdict(p) | {"batch": BATCH, "amqp_backlog": min(p.backlog, AMQP_BACKLOG_MAX)}
    limit_s = 60.0 if ctx.smoke else 900.0
    raw: dict[str, Any] = {}
    brokers: list[Broker] = [Jetstream(), Rabbit()]
    for b in brokers:
        await b.connect()
    try:
        with bench_database(ctx.admin_url, "b6") as db_url:
            start = await head(db_url)
            await preload(db_url, p.events)
            ctx.log(f"b6 loaded {p.events:,} events")
            server = outbox_server(ctx, db_url, "b6", OUTBOX_POLL_INTERVAL="1s")
            async with server, api(server) as http:
                for broker in brokers:
                    kind = broker.kind
                    subject = "x.{type}"
                    messages = await messages_after(db_url, start, subject)
                    runs: dict[str, list[dict[str, Any]]] = {"outbox": [], "bare": []}
                    for rep in range(p.repeats):
                        for variant in interleaved(("outbox", "bare"), rep):
                            if variant == "outbox":
                                r = await run_outbox(http, broker, start, p.events, limit_s)
                            else:
                                r = await run_bare(broker, messages, limit_s)
                            runs[variant].append(r)
                            ctx.log(f"b6 {kind} rep {rep + 1} {variant}: {r['rate']:,.0f}/s")
                    raw[f"{kind}_throughput"] = runs
                    lats: dict[str, list[dict[str, Any]]] = {"outbox": [], "direct": []}
                    for rep in range(p.latency_repeats):
                        for variant in interleaved(("outbox", "direct"), rep):
                            lat = await run_latency(
                                http, broker, db_url, p, limit_s, direct=variant == "direct"
                            )
                            lats[variant].append(lat)
                            ctx.log(f"b6 {kind} {variant} latency: {lat['commit_to_arrival_ms']}")
                    raw[f"{kind}_latency"] = lats
            # The backlog, on a server of its own (its RSS is the one measured).
            backlog_start = await head(db_url)
            await preload(db_url, p.backlog)
            ctx.log(f"b6 loaded a backlog of {p.backlog:,} events")
            for broker in brokers:
                n = p.backlog if broker.kind == "nats" else min(p.backlog, AMQP_BACKLOG_MAX)
                server = outbox_server(ctx, db_url, f"b6-backlog-{broker.kind}")
                async with server, api(server) as http:
                    r = await run_backlog(http, server, broker, backlog_start, n, limit_s)
                raw[f"{broker.kind}_backlog"] = r | {"server_peak_rss_mb": server.peak_rss_mb}
                ctx.log(f"b6 {broker.kind} backlog: {n:,} at {r['rate']:,.0f}/s")
    finally:
        for b in brokers:
            await b.close()
    result.raw = raw
    for broker, label in ((brokers[0], "JetStream"), (brokers[1], "RabbitMQ")):
        kind = broker.kind
        runs = raw[f"{kind}_throughput"]
        ours = [r["rate"] for r in runs["outbox"]]
        base = [r["rate"] for r in runs["bare"]]
        lats = raw[f"{kind}_latency"]
        ours_lat = [r["commit_to_arrival_ms"] for r in lats["outbox"]]
        direct_lat = [r["commit_to_arrival_ms"] for r in lats["direct"]]
        back = raw[f"{kind}_backlog"]
        target = kind == "nats"
        result.metrics += [
            Metric(f"{label}: throughput", "events/s", Spread.of(ours), None, Spread.of(base)),
            ratio_metric(
                f"{label}: outbox/bare (interleaved)", ours, base, RATIO_TARGET if target else None
            ),
            Metric(
                f"{label}: commit->arrival p50 @{p.rate}/s",
                "ms",
                Spread.of([x["p50"] for x in ours_lat]),
                baseline=Spread.of([x["p50"] for x in direct_lat]),
                note="baseline: the writer publishes itself after COMMIT",
            ),
            Metric(
                f"{label}: commit->arrival p99 @{p.rate}/s",
                "ms",
                Spread.of([x["p99"] for x in ours_lat]),
                P99_TARGET if target else None,
                baseline=Spread.of([x["p99"] for x in direct_lat]),
            ),
            Metric(
                f"{label}: backlog drain ({back['events']:,})",
                "events/s",
                Spread.of([back["rate"]]),
            ),
            Metric(
                f"{label}: RSS growth during the drain", "MB", Spread.of([back["rss_growth_mb"]])
            ),
            Metric(
                f"{label}: server peak RSS (drain)",
                "MB",
                Spread.of([back["server_peak_rss_mb"]]),
                RSS_TARGET if target else None,
            ),
        ]
    return result
