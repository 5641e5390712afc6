"""One soak run: a fresh database, one ``outbox serve`` process, two
receivers (one failing every fifth request: 20%), WebSocket clients that
resume, a paced writer that rolls back 10% of its transactions; then the
oracle, latency and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.stats import percentile
from outbox.migrate import migrate
from soak.rss import RssSampler
from tests.faults.harness import Hook, Ledger, Verdict, Writer, add_hook, settle, writing
from tests.faults.wsclients import ResumingClient, connected, running_clients
from tests.support.receivers import Action, Reply, Request, running
from tests.support.relay import ServeProcess

ADMIN_URL = os.environ.get("OUTBOX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVE_ENV = {
    # Compressed so that a failed attempt is retried within the run.
    "OUTBOX_RETRY_SCHEDULE": "500ms,1s,2s,4s",
    "OUTBOX_WEBHOOK_TIMEOUT": "5",
    "OUTBOX_LEASE": "15s",
    "OUTBOX_POLL_INTERVAL": "500ms",
}


@dataclass(frozen=True)
class Plan:
    seconds: float
    rate_per_min: float
    clients: int


@dataclass
class Result:
    verdict: Verdict | None
    error: str | None
    latencies_ms: list[float]
    rss: RssSampler
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.verdict is not None and self.verdict.ok


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    name = f"outbox_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo("", **info)
    try:
        with psycopg.connect(url) as conn:
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def failing_every(k: int) -> Callable[[Request], Action]:
    count = 0

    def handler(_req: Request) -> Action:
        nonlocal count
        count += 1
        return Reply(500, b'{"error":"soak"}') if count % k == 0 else Reply()

    return handler


def latencies(ledger: Ledger, hook: Hook) -> list[float]:
    """Commit to the first arrival at the receiver, per event, in ms."""
    first: dict[str, float] = {}
    for req in hook.receiver.requests:
        first.setdefault(req.headers.get("webhook-id", ""), req.at)
    out = []
    for eid, t in ledger.commit_times.items():
        at = first.get(f"evt_{eid}")
        if at is not None:
            out.append((at - t) * 1000.0)
    return sorted(out)


async def soak(plan: Plan, log: Callable[[str], None] = print) -> Result:
    ledger = Ledger()
    with fresh_database() as db_url, tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = ServeProcess(db_url, Path(tmp) / "serve.log", env=SERVE_ENV)
        try:
            await server.wait_ready()
            rss = RssSampler(server.proc.pid, every=max(1.0, plan.seconds / 20))
            async with (
                running() as steady,
                running(failing_every(5)) as flaky,
                await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn,
            ):
                hooks = [
                    await add_hook(conn, steady, ("fault.*",)),
                    await add_hook(conn, flaky, ("fault.*",)),
                ]
                try:
                    return await _drive(plan, db_url, server, hooks, ledger, rss, log)
                finally:
                    # Before the receivers close: their connections end with
                    # the server's, so no handler is left to be cancelled.
                    server.kill()
                    await _until(lambda: not steady._conns and not flaky._conns, 5.0)
        finally:
            server.kill()


async def _drive(
    plan: Plan,
    db_url: str,
    server: ServeProcess,
    hooks: list[Hook],
    ledger: Ledger,
    rss: RssSampler,
    say: Callable[[str], None],
) -> Result:
    url = f"ws://127.0.0.1:{server.port}/ws"
    clients = [
        ResumingClient(f"c{i}", [url], drop_every=2000 if i % 5 == 0 else None)
        for i in range(plan.clients)
    ]
    total = int(plan.rate_per_min * plan.seconds / 60.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop = asyncio.Event()
    sampler = asyncio.create_task(rss.run(stop))
    error: str | None = None
    verdict: Verdict | None = None
    try:
        async with running_clients(clients):
            if not await _until(lambda: connected(clients), 30.0):
                raise TimeoutError("the WebSocket clients did not connect within 30 s")
            writer = Writer(db_url, ledger, total=total, rate=plan.rate_per_min / 60.0)
            say(
                f"writing {total} events at {plan.rate_per_min:g}/min to {len(hooks)} webhooks "
                f"and {len(clients)} WebSocket clients ..."
            )
            async with writing(writer):
                pass
            say("writes done; waiting for every delivery and client ...")
            try:
                verdict = await settle(db_url, ledger, hooks, clients, timeout=60)
            except AssertionError as exc:
                error = str(exc)
    finally:
        stop.set()
        await sampler
    return Result(verdict, error, latencies(ledger, hooks[0]), rss, loop.time() - t0)


async def _until(pred: Callable[[], bool], limit: float) -> bool:
    """Wait until ``pred()`` holds, at most ``limit`` seconds; whether it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not pred():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)  # poll interval of the wait
    return True


def report(res: Result, plan: Plan) -> str:
    lines = [
        f"soak: {res.seconds:.0f}s, target {plan.rate_per_min:g} events/min, "
        f"{plan.clients} WebSocket clients"
    ]
    v = res.verdict
    if v is not None:
        lines += [
            f"events committed:   {v.committed} (rolled back on purpose: {v.rolled_back})",
            f"deliveries owed:    {v.pairs} (2 webhooks x committed)",
            f"delivered:          {v.delivered}",
            f"failed (visibly):   {v.failed}",
            f"repeated:           {v.repeated} (every repeat: same webhook-id, same body)",
        ]
    if res.latencies_ms:
        lat = res.latencies_ms
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        lines.append(
            f"end-to-end latency: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat[-1]:.0f} ms"
            " (commit -> first POST at the healthy receiver)"
        )
    samples = ", ".join(f"{t:.0f}s:{mb:.1f}" for t, mb in res.rss.samples)
    lines.append(f"server RSS (MB):    {samples}")
    lines.append(f"RSS slope:          {res.rss.slope_mb_per_min():+.2f} MB/min after warm-up")
    lines.append("oracle:             " + ("PASS" if res.ok else "FAIL"))
    if res.error:
        lines.append(res.error)
    return "\n".join(lines)
