"""B4 webhooks: deliveries/s recorded as success, vs a bare httpx loop.

Product: ``outbox serve`` with one webhook per receiver; N events are
published in one statement and the clock runs from that commit until all N
deliveries are ``success`` in ``outbox.deliveries`` (polled every 20 ms), so
the dispatcher, the claims, signing, the POSTs and the outcome writes are all
inside it. Baseline: a bare loop in the harness of the SAME client stack
(``relay.delivery.client.make_client``: ``httpx.AsyncClient`` on the
httpx-aiohttp transport, responses streamed) posting the same bodies
(``json.dumps(payload, sort_keys=True)``) to the same receiver at the same
concurrency (the sender's per-endpoint limit, which for one endpoint is its
effective concurrency), retrying a failed POST at once. Beside it, for
comparison only: the same loop on httpx's default transport, on bare
aiohttp, and "outbox x2": two ``outbox serve`` processes (the supported
scale-out) on a database of their own, each with half the per-endpoint
concurrency, so the receiver sees the same 16 requests in flight. All
variants run interleaved, rotated each repetition. Beside the rates:
CPU per delivery of the ``outbox serve`` process and of its PostgreSQL
backends (``/proc``), and the bare loop's own CPU per request, which do not
swing with the machine's load the way rates do (``bench.b4_profile`` runs
the pipeline alone with a profiler); the receiver's CPU in each run, the
whole machine's CPU per delivery (sender side + receiver), how many cores
were busy, and the rate ratio that CPU allows: when both variants keep the
cores busy, bare machine CPU per delivery / the pipeline's bounds outbox/bare.

Receivers (``bench.receiver``, one process each): one always answering 200,
one answering 500 to every 5th request (20% failing). The product runs with
``OUTBOX_RETRY_SCHEDULE`` of 10 ms steps: the default's 5 s first retry would
make the drain time of a finite batch measure the schedule, not the sender.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg

from bench.context import Context, interleaved
from bench.payloads import payload, publish_events_sql
from bench.pg import bench_database
from bench.procs import Child, Server, cpu_s, free_port, helper, running
from bench.report import Metric, ScenarioResult, Target, rate_vs_baseline, ratio_metric
from bench.stats import Spread
from bench.system import create_webhook, outbox_server

# Issue 15: no slower than the hand-written client's pipeline figure (3,700/s),
# and at least 0.8x a bare loop of the same httpx client and transport.
RATE_TARGET = Target(">=", 3700)
RATIO_TARGET = Target(">=", 0.8)
RECEIVERS = {"ok": 0, "failing 20%": 5}  # name -> fail every K-th request
FAST_RETRIES = ",".join(["10ms"] * 7)
POLL = 0.02
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Params:
    deliveries: int
    concurrency: int  # in flight to one receiver: per endpoint, within the process's
    repeats: int
    delivery_concurrency: int  # the process's default (OUTBOX_DELIVERY_CONCURRENCY)


def params(ctx: Context) -> Params:
    from outbox.relay.config import DeliverySettings

    fields = DeliverySettings.model_fields  # the defaults, not this environment's
    total = int(fields["delivery_concurrency"].default)
    concurrency = min(total, int(fields["endpoint_concurrency"].default))
    if ctx.smoke:
        return Params(deliveries=30, concurrency=concurrency, repeats=1, delivery_concurrency=total)
    return Params(
        deliveries=3000, concurrency=concurrency, repeats=ctx.reps(3), delivery_concurrency=total
    )


async def wait_delivered(
    conn: psycopg.AsyncConnection[Any], webhook_id: int, lo: int, hi: int, n: int, limit_s: float
) -> tuple[int, int, int]:
    """Poll until all n deliveries are finished; (ns when seen, successes, failures)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'success'),"
            " count(*) FILTER (WHERE status = 'failed')"
            " FROM outbox.deliveries WHERE webhook_id = %s AND event_id BETWEEN %s AND %s",
            (webhook_id, lo, hi),
        )
        row = await cur.fetchone()
        now = time.monotonic_ns()
        ok, failed = (int(row[0]), int(row[1])) if row else (0, 0)
        if ok + failed >= n:
            return now, ok, failed
        if loop.time() > deadline:
            raise RuntimeError(f"webhook drain: {ok}+{failed} of {n} finished after {limit_s}s")
        await asyncio.sleep(POLL)  # the polling interval of the measurement


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _relay_backends(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'outbox%%'"
    )
    return [int(r[0]) for r in await cur.fetchall()]


async def run_outbox(
    db_url: str,
    server_pids: list[int],
    webhook: dict[str, Any],
    event_type: str,
    n: int,
    limit_s: float,
) -> dict[str, Any]:
    """The pipeline's rate, and its CPU per delivery: the ``outbox serve``
    processes and their PostgreSQL backends (the harness's polling backend is
    not counted)."""
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with conn:
        backends = await _relay_backends(conn)
        py0 = sum(cpu_s(pid, gone_is_zero=True) for pid in server_pids)
        pg0 = sum(cpu_s(b, gone_is_zero=True) for b in backends)
        cur = await conn.execute(publish_events_sql(event_type), {"n": n, "marker": ""})
        row = await cur.fetchone()
        t0 = time.monotonic_ns()
        assert row is not None
        end, ok, failed = await wait_delivered(conn, int(webhook["id"]), row[0], row[1], n, limit_s)
        py = sum(cpu_s(pid, gone_is_zero=True) for pid in server_pids) - py0
        pg = sum(cpu_s(b, gone_is_zero=True) for b in backends) - pg0
    seconds = (end - t0) / 1e9
    return {
        "n": n,
        "success": ok,
        "failed": failed,
        "seconds": seconds,
        "rate": ok / seconds,
        "serve_cpu_us": py * 1e6 / n,
        "pg_cpu_us": pg * 1e6 / n,
    }


Post = Callable[[bytes], Awaitable[int]]


async def _bare_loop(post: Post, n: int, concurrency: int, limit_s: float) -> dict[str, Any]:
    """``concurrency`` workers POST the n bodies, each retried at once until 2xx."""
    bodies = [json.dumps(payload(i), sort_keys=True).encode() for i in range(1, n + 1)]
    todo: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        todo.put_nowait(b)
    attempts = 0

    async def worker() -> None:
        nonlocal attempts
        while not todo.empty():
            body = todo.get_nowait()
            while True:
                attempts += 1
                if 200 <= await post(body) < 300:
                    break

    t0, cpu0 = time.monotonic_ns(), _self_cpu_s()
    async with asyncio.timeout(limit_s), asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    seconds = (time.monotonic_ns() - t0) / 1e9
    cpu_us = (_self_cpu_s() - cpu0) * 1e6 / n
    return {
        "n": n,
        "success": n,
        "attempts": attempts,
        "seconds": seconds,
        "rate": n / seconds,
        "cpu_us": cpu_us,
    }


async def run_bare(url: str, n: int, concurrency: int, limit_s: float) -> dict[str, Any]:
    """The product's own client stack: ``make_client`` (httpx.AsyncClient on the
    httpx-aiohttp transport, with the SSRF connector), streamed as the sender does."""
    from outbox.relay.delivery.client import make_client

    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    async with make_client(max_connections=concurrency, allow=loopback) as client:

        async def post(body: bytes) -> int:
            async with client.stream("POST", url, content=body, headers=JSON) as r:
                async for _ in r.aiter_raw():
                    pass
                return r.status_code

        return await _bare_loop(post, n, concurrency, limit_s)


async def run_bare_httpx(url: str, n: int, concurrency: int, limit_s: float) -> dict[str, Any]:
    """httpx with its default transport (httpcore + h11), for comparison."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # TCP_NODELAY: httpcore writes a request's head and body separately, and
    # without it Nagle holds the body until the receiver's delayed ACK
    # (~40 ms on Linux loopback), which caps any sender at a few hundred/s.
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[NODELAY])
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:

        async def post(body: bytes) -> int:
            return (await client.post(url, content=body, headers=JSON)).status_code

        return await _bare_loop(post, n, concurrency, limit_s)


async def run_bare_aiohttp(url: str, n: int, concurrency: int, limit_s: float) -> dict[str, Any]:
    """aiohttp alone (the engine under the product's transport), for comparison."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(body: bytes) -> int:
            async with session.post(url, data=body, headers=JSON) as r:
                await r.read()
                return r.status

        return await _bare_loop(post, n, concurrency, limit_s)


def _add_machine_cpu(r: dict[str, Any], receiver_s: float) -> None:
    """The whole machine's CPU per delivery in a run: the sender side (``outbox
    serve`` and its PostgreSQL backends, or the bare loop) plus the receiver,
    and how many of the cores they kept busy on average. When both variants
    fill the machine, the ratio of their totals bounds the ratio of their
    rates (the "CPU allows" row)."""
    n = r["n"]
    r["receiver_cpu_us"] = receiver_s * 1e6 / n
    sender = r["serve_cpu_us"] + r["pg_cpu_us"] if "serve_cpu_us" in r else r["cpu_us"]
    r["machine_cpu_us"] = sender + r["receiver_cpu_us"]
    r["cores_busy"] = r["machine_cpu_us"] * n / 1e6 / r["seconds"]


BARE = {"bare": run_bare, "bare httpx default": run_bare_httpx, "bare aiohttp": run_bare_aiohttp}


async def run(ctx: Context) -> ScenarioResult:
    p = params(ctx)
    result = ScenarioResult("b4", "webhooks: deliveries/s vs a bare loop of the same httpx client")
    result.params = asdict(p) | {"receivers": RECEIVERS, "retry_schedule": FAST_RETRIES}
    limit_s = 60.0 if ctx.smoke else 300.0
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    receivers: dict[str, tuple[Child, int]] = {}
    for name, every in RECEIVERS.items():
        port = free_port()
        receivers[name] = (
            Child(
                f"receiver {name}",
                helper("receiver", "--port", str(port), "--fail-every", str(every)),
                ctx.workdir / "b4-receiver.log",
            ),
            port,
        )
    env = {"OUTBOX_RETRY_SCHEDULE": FAST_RETRIES, "OUTBOX_WEBHOOK_TIMEOUT": "10"}
    # "outbox x2": the scale-out users have (two `outbox serve` copies claiming
    # from one database), on a database of its own so the single server does
    # not help it, each copy with half the per-endpoint concurrency: the same
    # 16 requests in flight to the receiver as every other variant.
    half = max(1, p.concurrency // 2)
    env_x2 = env | {
        "OUTBOX_ENDPOINT_CONCURRENCY": str(half),
        "OUTBOX_DELIVERY_CONCURRENCY": str(max(half, p.delivery_concurrency // 2)),
    }
    with (
        bench_database(ctx.admin_url, "b4") as db_url,
        bench_database(ctx.admin_url, "b4x2") as db_x2,
    ):
        server: Server = outbox_server(ctx, db_url, "b4", **env)
        pair = [outbox_server(ctx, db_x2, f"b4x2-{i}", **env_x2) for i in (1, 2)]
        ok_rx, flaky_rx = receivers["ok"][0], receivers["failing 20%"][0]
        async with running(ok_rx), running(flaky_rx), server, pair[0], pair[1]:
            setups = {
                "outbox": (db_url, server, [server.pid]),
                "outbox x2": (db_x2, pair[0], [s.pid for s in pair]),
            }
            hooks: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
            urls = {}
            for i, (name, (_, port)) in enumerate(receivers.items()):
                event_type = f"bench.hook{i}"
                urls[name] = f"http://127.0.0.1:{port}/hook"
                for variant, (_, srv, _) in setups.items():
                    hook = await create_webhook(srv, urls[name], event_type, f"bench {name}")
                    hooks[(name, variant)] = (hook, event_type)
            for rep in range(p.repeats):
                for name, url in urls.items():
                    for variant in interleaved((*setups, *BARE), rep):
                        rx0 = cpu_s(receivers[name][0].pid)
                        if variant in setups:
                            db, _, pids = setups[variant]
                            hook, event_type = hooks[(name, variant)]
                            r = await run_outbox(db, pids, hook, event_type, p.deliveries, limit_s)
                        else:
                            bare = BARE[variant]
                            r = await bare(url, p.deliveries, p.concurrency, limit_s)
                        _add_machine_cpu(r, cpu_s(receivers[name][0].pid) - rx0)
                        runs.setdefault((name, variant), []).append(r)
                        cpu = (
                            f" (CPU/delivery: serve {r['serve_cpu_us']:.0f} us,"
                            f" PostgreSQL {r['pg_cpu_us']:.0f} us,"
                            if variant in setups
                            else f" (CPU/request {r['cpu_us']:.0f} us,"
                        ) + (
                            f" receiver {r['receiver_cpu_us']:.0f} us;"
                            f" {r['cores_busy']:.2f} cores busy)"
                        )
                        ctx.log(
                            f"b4 rep {rep + 1} receiver {name} {variant}: "
                            f"{r['rate']:,.0f} deliveries/s{cpu}"
                        )
        result.raw["server_peak_rss_mb"] = server.peak_rss_mb
    for name in RECEIVERS:
        ours, base = runs[(name, "outbox")], runs[(name, "bare")]
        failed = sum(r["failed"] for r in ours)
        note = f"{failed} deliveries failed" if failed else ""
        result.metrics += rate_vs_baseline(
            f"receiver {name}", "deliveries/s", ours, base, (RATE_TARGET, RATIO_TARGET), note
        )
        x2 = runs[(name, "outbox x2")]

        def col(rs: list[dict[str, Any]], key: str) -> Spread:
            return Spread.of([r[key] for r in rs])

        label = f"receiver {name}: "
        # (row, unit, the pipeline's key, the bare loop's key or None, note)
        paired: list[tuple[str, str, str, str | None, str]] = [
            (
                "CPU per delivery, outbox serve",
                "us",
                "serve_cpu_us",
                "cpu_us",
                "baseline: the bare loop's process per request",
            ),
            ("CPU per delivery, PostgreSQL backends", "us", "pg_cpu_us", None, ""),
            ("CPU per delivery, receiver", "us", "receiver_cpu_us", "receiver_cpu_us", ""),
            (
                "CPU per delivery, whole machine",
                "us",
                "machine_cpu_us",
                "machine_cpu_us",
                "serve + PostgreSQL + receiver; baseline: bare loop + receiver",
            ),
            ("cores busy", "cores", "cores_busy", "cores_busy", f"of {os.cpu_count()}"),
        ]
        result.metrics += [
            Metric(
                label + row,
                unit,
                col(ours, key),
                baseline=col(base, bkey) if bkey else None,
                note=note,
            )
            for row, unit, key, bkey, note in paired
        ]
        result.metrics += [
            Metric(
                label + "outbox/bare the CPU allows",
                "ratio",
                Spread.of(
                    [
                        b["machine_cpu_us"] / o["machine_cpu_us"]
                        for o, b in zip(ours, base, strict=True)
                    ]
                ),
                note="bare machine CPU per delivery / outbox's, per repetition: "
                "the rate ratio when both fill the cores",
            ),
            Metric(
                label + "outbox x2 (two serve processes, 8 + 8 per endpoint)",
                "deliveries/s",
                col(x2, "rate"),
                note="the scale-out; no target",
            ),
            ratio_metric(
                label + "outbox x2/bare", [r["rate"] for r in x2], [r["rate"] for r in base]
            ),
            Metric(
                label + "outbox x2 CPU per delivery, both serve processes",
                "us",
                col(x2, "serve_cpu_us"),
            ),
        ]
        for variant in ("bare httpx default", "bare aiohttp"):
            others = runs[(name, variant)]
            result.metrics.append(
                Metric(
                    f"receiver {name}: {variant} loop",
                    "deliveries/s",
                    Spread.of([r["rate"] for r in others]),
                    note="for comparison (no target)",
                )
            )
    result.raw["runs"] = [{"receiver": r, "variant": v, "runs": x} for (r, v), x in runs.items()]
    return result
