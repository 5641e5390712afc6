"""The fault suite's harness: writers that record what they committed, the
webhooks and receivers they feed, and the one oracle every fault is judged by.

The oracle (:func:`settle`): for every committed event and every webhook that
matched it at commit, the receiver has seen that ``webhook-id`` with a valid
Standard Webhooks signature, or the delivery is visibly ``failed`` in
``outbox.deliveries``; every resuming WebSocket client has seen every
committed event; no rolled-back event appears anywhere (outbox, receivers,
sockets); a repeat always carries the same id and body, and the body is the
committed payload exactly as the contract serializes it.

Webhooks are created before the writers start and never changed, so "matched
at commit" is the webhook's patterns applied to the event type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from outbox.events import Matcher
from tests.faults.wsclients import ResumingClient
from tests.support.receivers import Receiver, Request

# Standard Webhooks receivers reject timestamps more than 5 minutes off.
TIMESTAMP_TOLERANCE = 300.0


def verify_at_receipt(wh: Webhook, req: Request) -> None:
    """What ``Webhook.verify`` checks, judged at the moment the request arrived.

    The library compares the timestamp with *now*; the oracle reads requests
    after the run, which for a 10-minute soak is past the tolerance. So: the
    timestamp against the receipt time, the signature with the library's own
    ``sign``.
    """
    try:
        msg_id = req.headers["webhook-id"]
        ts = int(req.headers["webhook-timestamp"])
        signatures = req.headers["webhook-signature"].split(" ")
    except (KeyError, ValueError):
        raise WebhookVerificationError("Missing or malformed required headers") from None
    received = time.time() - (time.monotonic() - req.at)
    if abs(received - ts) > TIMESTAMP_TOLERANCE:
        raise WebhookVerificationError("Message timestamp too old or too new at receipt")
    expected = wh.sign(
        msg_id=msg_id, timestamp=datetime.fromtimestamp(ts, tz=UTC), data=req.body.decode()
    )
    if expected not in signatures:
        raise WebhookVerificationError("No matching signature found")


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EVENT_TYPES = ("fault.a", "fault.b")


# --- what the writers did -------------------------------------------------------


@dataclass
class Ledger:
    """Every event a writer published, by outcome.

    ``in_doubt``: the COMMIT itself failed (the connection died under it), so
    the outcome is the server's to tell; :meth:`resolve` asks it afterwards.
    """

    committed: dict[int, tuple[str, Any]] = field(default_factory=dict)
    commit_times: dict[int, float] = field(default_factory=dict)  # monotonic, after COMMIT
    rolled_back: set[int] = field(default_factory=set)
    in_doubt: dict[int, tuple[str, Any]] = field(default_factory=dict)
    transactions: int = 0

    async def resolve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self.in_doubt:
            return
        cur = await conn.execute(
            "SELECT id FROM outbox.events WHERE id = ANY(%s)", (list(self.in_doubt),)
        )
        present = {int(r[0]) for r in await cur.fetchall()}
        for eid, ev in self.in_doubt.items():
            if eid in present:
                self.committed[eid] = ev
            else:
                self.rolled_back.add(eid)
        self.in_doubt.clear()


def small_payload(seq: int) -> dict[str, Any]:
    # Unsorted keys and non-ASCII text: the body must still be the sorted dump.
    return {"seq": seq, "name": "Zoë", "at": {"b": 2, "a": 1}}


@dataclass
class Writer:
    """Publishes ``total`` events in small transactions and rolls back every
    ``rollback_every``-th transaction on purpose.

    Survives a lost connection (a terminated backend, a server restart):
    what was in flight is rolled back, or in doubt if COMMIT was under way,
    and it reconnects and goes on. ``rate`` (events per second) paces it;
    None writes as fast as it can.
    """

    url: str
    ledger: Ledger
    total: int
    rate: float | None = None
    per_tx: int = 2
    rollback_every: int = 10
    payload: Callable[[int], Any] = small_payload
    reconnect_for: float = 30.0  # give up after this long without a connection
    written: int = 0
    reconnects: int = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq = 0
        while seq < self.total:
            conn = await self._connect()
            try:
                while seq < self.total:
                    if self.rate:
                        # Open-loop pacing of the load, not synchronization.
                        ahead = start + seq / self.rate - loop.time()
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                    seq = await self._transaction(conn, seq)
            except psycopg.OperationalError:
                self.reconnects += 1
            finally:
                await conn.close()

    async def _transaction(self, conn: psycopg.AsyncConnection[Any], seq: int) -> int:
        self.ledger.transactions += 1
        rollback = self.ledger.transactions % self.rollback_every == 0
        events: dict[int, tuple[str, Any]] = {}
        try:
            for i in range(self.per_tx):
                etype = EVENT_TYPES[(seq + i) % len(EVENT_TYPES)]
                payload = self.payload(seq + i)
                cur = await conn.execute("SELECT outbox.publish(%s, %s)", (etype, Jsonb(payload)))
                row = await cur.fetchone()
                assert row is not None
                events[int(row[0])] = (etype, payload)
        except psycopg.OperationalError:
            # Lost before COMMIT: the transaction did not happen.
            self.ledger.rolled_back.update(events)
            raise
        if rollback:
            await conn.rollback()
            self.ledger.rolled_back.update(events)
            return seq + self.per_tx
        try:
            await conn.commit()
        except psycopg.OperationalError:
            self.ledger.in_doubt.update(events)
            raise
        now = time.monotonic()
        self.ledger.committed.update(events)
        for eid in events:
            self.ledger.commit_times[eid] = now
        self.written += len(events)
        return seq + self.per_tx

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_for
        while True:
            try:
                return await psycopg.AsyncConnection.connect(self.url, connect_timeout=5)
            except psycopg.OperationalError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)  # backoff between connection attempts


@contextlib.asynccontextmanager
async def writing(writer: Writer) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``writer`` as a task; on exit wait for it (it is bounded) and re-raise."""
    task = asyncio.create_task(writer.run(), name="fault-writer")
    # Bounded: the paced duration (a soak writes for minutes) plus slack.
    limit = (writer.total / writer.rate if writer.rate else 0.0) + 120.0
    try:
        yield task
        await asyncio.wait_for(task, timeout=limit)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --- webhooks and what their receivers saw -------------------------------------


@dataclass
class Hook:
    """One webhook and the loopback receiver behind it."""

    id: int
    patterns: tuple[str, ...]
    receiver: Receiver
    secret: str = SECRET
    # webhook-id -> (body, times seen); built incrementally from receiver.requests
    seen: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # oracle violations found while reading
    _read: int = 0

    def matches(self, event_type: str) -> bool:
        return Matcher(list(self.patterns))(event_type)

    def absorb(self) -> None:
        """Verify every request not looked at yet (each exactly once)."""
        wh = Webhook(self.secret)
        requests = self.receiver.requests
        for req in requests[self._read :]:
            wid = req.headers.get("webhook-id", "")
            try:
                verify_at_receipt(wh, req)
            except WebhookVerificationError as exc:
                self.bad.append(f"hook {self.id}: bad signature on {wid}: {exc}")
                continue
            before = self.seen.get(wid)
            if before is not None and before[0] != req.body:
                self.bad.append(f"hook {self.id}: {wid} repeated with a different body")
            self.seen[wid] = (req.body, (before[1] if before else 0) + 1)
        self._read = len(requests)

    @property
    def repeats(self) -> int:
        return sum(n - 1 for _, n in self.seen.values())


async def add_hook(
    conn: psycopg.AsyncConnection[Any], receiver: Receiver, patterns: tuple[str, ...]
) -> Hook:
    cur = await conn.execute(
        "INSERT INTO outbox.webhooks (name, url, event_types, secret) VALUES (%s, %s, %s, %s) "
        "RETURNING id",
        (f"fault-{receiver.port}", receiver.url, list(patterns), SECRET),
    )
    row = await cur.fetchone()
    assert row is not None
    return Hook(int(row[0]), patterns, receiver)


# --- the oracle -----------------------------------------------------------------


@dataclass
class Verdict:
    committed: int
    rolled_back: int
    pairs: int  # (webhook, event) pairs owed a delivery
    delivered: int
    failed: int
    repeated: int
    ws_clients: int
    missing: list[str]
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.violations

    def summary(self) -> str:
        return (
            f"committed={self.committed} rolled_back={self.rolled_back} pairs={self.pairs} "
            f"delivered={self.delivered} failed={self.failed} repeated={self.repeated} "
            f"ws_clients={self.ws_clients}"
        )


def _body(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True).encode()


async def judge(
    conn: psycopg.AsyncConnection[Any],
    ledger: Ledger,
    hooks: Iterable[Hook],
    clients: Iterable[ResumingClient] = (),
) -> Verdict:
    """One look at the whole system: what is still missing, what is wrong."""
    hooks, clients = list(hooks), list(clients)
    await ledger.resolve(conn)
    missing: list[str] = []
    violations: list[str] = []
    cur = await conn.execute(
        "SELECT webhook_id, event_id FROM outbox.deliveries WHERE status = 'failed'"
    )
    failed_rows = {(int(w), int(e)) for w, e in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT id FROM outbox.events WHERE id = ANY(%s)", (list(ledger.rolled_back),)
    )
    for (eid,) in await cur.fetchall():
        violations.append(f"rolled-back event {eid} is in outbox.events")
    pairs = delivered = failed = 0
    for hook in hooks:
        hook.absorb()
        violations += hook.bad
        for eid, (etype, payload) in ledger.committed.items():
            if not hook.matches(etype):
                continue
            pairs += 1
            got = hook.seen.get(f"evt_{eid}")
            if got is not None:
                delivered += 1
                if got[0] != _body(payload):
                    violations.append(f"hook {hook.id}: evt_{eid} body is not the payload")
            elif (hook.id, eid) in failed_rows:
                failed += 1
            else:
                missing.append(f"hook {hook.id} has not seen evt_{eid} ({etype})")
        for eid in ledger.rolled_back:
            if f"evt_{eid}" in hook.seen:
                violations.append(f"hook {hook.id} received rolled-back event {eid}")
    bodies = {eid: hash(_body(p).decode()) for eid, (_, p) in ledger.committed.items()}
    for client in clients:
        seen = client.seen
        violations += [
            f"ws client {client.name}: event {eid} payload differs from the committed one"
            for eid, h in client.bodies.items()
            if eid in bodies and bodies[eid] != h
        ]
        lost = sorted(eid for eid in ledger.committed if eid not in seen)
        if lost:
            missing.append(
                f"ws client {client.name} has not seen {len(lost)} events ({lost[:5]}...); "
                f"connects={client.connects} closes={client.closes[-5:]}"
            )
        violations += [
            f"ws client {client.name} got rolled-back event {eid}"
            for eid in ledger.rolled_back
            if eid in seen
        ]
        violations += client.bad
    return Verdict(
        committed=len(ledger.committed),
        rolled_back=len(ledger.rolled_back),
        pairs=pairs,
        delivered=delivered,
        failed=failed,
        repeated=sum(h.repeats for h in hooks),
        ws_clients=len(clients),
        missing=missing,
        violations=violations,
    )


async def settle(
    db_url: str,
    ledger: Ledger,
    hooks: Iterable[Hook],
    clients: Iterable[ResumingClient] = (),
    *,
    timeout: float = 30.0,
) -> Verdict:
    """Wait (up to ``timeout``) until nothing is missing, then judge for good.

    Raises AssertionError naming what is missing or wrong; a violation fails
    at once, without waiting.
    """
    hooks, clients = list(hooks), list(clients)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        while True:
            verdict = await judge(conn, ledger, hooks, clients)
            if verdict.violations:
                raise AssertionError(_explain("oracle violated", verdict))
            if not verdict.missing:
                return verdict
            if loop.time() > deadline:
                raise AssertionError(_explain(f"still missing after {timeout}s", verdict))
            await asyncio.sleep(0.1)  # poll interval of the wait


def _explain(what: str, v: Verdict) -> str:
    lines = [f"{what}: {v.summary()}"]
    lines += v.violations[:20] + v.missing[:20]
    extra = len(v.violations) + len(v.missing) - 40
    if extra > 0:
        lines.append(f"... and {extra} more")
    return "\n".join(lines)


# --- settings for fault runs -----------------------------------------------------


def fast_settings(settings: Any, **changes: Any) -> Any:
    """The test settings with the retry schedule and timeouts compressed to
    seconds, so that a fault run retries many times within a test."""
    from datetime import timedelta

    base = {
        "retry_schedule": tuple(timedelta(milliseconds=ms) for ms in (100, 200, 400, 800, 1600)),
        "webhook_timeout": 0.5,
        "lease": timedelta(seconds=3),
        "poll_interval": 0.2,
    }
    base.update(changes)
    return settings.replace(**base)


async def attempt_outcomes(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Attempt counts by outcome: proof that a fault really made attempts fail."""
    cur = await conn.execute(
        "SELECT outcome, count(*) FROM outbox.delivery_attempts GROUP BY outcome"
    )
    return {str(k): int(n) for k, n in await cur.fetchall()}
