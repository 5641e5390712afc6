"""``python -m bench``: run the benchmark scenarios, print a table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import env
from bench.context import Context
from bench.pg import admin_url_from_env
from bench.report import ScenarioResult, table

SCENARIOS = {
    "b1": (
        "bench.b1_write",
        "write cost: INSERT tps, bare vs tracked (relay awake/asleep) vs wake-up off vs floor",
    ),
    "b2": ("bench.b2_latency", "latency: commit -> WebSocket receipt, open-loop at fixed rates"),
    "b3": ("bench.b3_fanout", "fan-out: messages/s to N clients vs a bare Starlette broadcaster"),
    "b4": ("bench.b4_webhooks", "webhooks: deliveries/s vs a bare httpx loop, also 20% failing"),
    "b4k": (
        "bench.b4_ordering",
        "webhooks, ordering key: 100 keys and 1 key vs unordered, and one failing key",
    ),
    "b5": ("bench.b5_backlog", "backlog: 1,000,000 events: feed read, WebSocket drain, webhooks"),
    "b6": (
        "bench.b6_sinks",
        "sinks: events/s into JetStream and RabbitMQ vs a bare client loop, latency, backlog",
    ),
    "b7": (
        "bench.b7_trace",
        "trace context: writes with a traceparent set vs not; relay exporting spans vs not",
    ),
}

EPILOG = """scenarios:
{scenarios}

Every scenario measures its baseline in the same run, interleaved with the
product and repeated; the table shows median (min to max) over repetitions
and each issue-8 target as met or MISSED (a miss is a result, not an error:
the exit status is 1 only if a scenario could not run). B1 and B2 need
pgbench on the PATH; --profile needs py-spy (dev extra). Each scenario uses
a fresh database bench_<scenario>_<random> on the admin server (dropped
afterwards, also on Ctrl-C or SIGTERM) and starts `outbox serve` (and its
helpers) on loopback ports as subprocesses.

environment:
  BENCH_ADMIN_URL  superuser URL of the Postgres server to use
                   (default postgresql://postgres@127.0.0.1:5432/postgres)
  BENCH_NATS_URL   NATS with JetStream for B6 (default nats://127.0.0.1:4222)
  BENCH_AMQP_URL   RabbitMQ for B6 (default amqp://guest:guest@127.0.0.1:5672/)

examples:
  python -m bench                          # everything, ~11-16 minutes on 2 cores
  python -m bench --scenario b1 --repeats 5
  python -m bench --smoke --json /tmp/smoke.json   # seconds; checks the harness only
"""


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {k}  {v[1]}" for k, v in SCENARIOS.items())
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="outbox-relay benchmark suite (issue 8): write cost, latency, fan-out, "
        "webhook delivery and backlog, each as a ratio against a baseline measured side by side.",
        epilog=EPILOG.format(scenarios=listing),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        metavar="{b1,b2,b3,b4,b4k,b5,b6,b7,all}",
        help="scenario to run; repeat the flag for several (default: all)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and one repetition: exercises every code path in seconds; "
        "the numbers mean nothing",
    )
    p.add_argument(
        "--repeats", type=int, metavar="N", help="repetitions per variant (default: per scenario)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results and environment here")
    p.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)"
    )
    p.add_argument(
        "--admin-url", metavar="URL", help="Postgres superuser URL (env BENCH_ADMIN_URL)"
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every `outbox serve` with py-spy into DIR/<scenario>.txt (collapsed "
        "stacks; summarise with python -m bench.hotspots). Costs CPU: not for reported runs",
    )
    p.add_argument(
        "--logs",
        metavar="DIR",
        help="keep the logs of every server and helper process (and the pgbench scripts) "
        "in DIR instead of a temporary folder",
    )
    p.add_argument(
        "--b6-backlog",
        type=int,
        metavar="N",
        help="events in B6's backlog drain (default 1,000,000; --smoke 3,000)",
    )
    p.add_argument(
        "--b1-writers",
        type=int,
        action="append",
        metavar="N",
        help="B1 at N concurrent writers only; repeat for several (default 1, 4 and 16)",
    )
    p.add_argument(
        "--b2-rate",
        type=int,
        action="append",
        metavar="N",
        help="B2 at N events/s only (one of 10, 1000, 5000); repeat for several (default all)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _selected(args: argparse.Namespace) -> list[str]:
    chosen = args.scenario or ["all"]
    if "all" in chosen:
        return list(SCENARIOS)
    return [k for k in SCENARIOS if k in chosen]


async def _run_all(ctx: Context, keys: list[str]) -> list[ScenarioResult]:
    # SIGINT/SIGTERM cancel the run, so every scenario's cleanup still runs:
    # helper processes stopped, servers stopped, bench databases dropped.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    results = []
    for key in keys:
        module = importlib.import_module(SCENARIOS[key][0])
        ctx.log(f"{key}: {SCENARIOS[key][1]}")
        started = time.monotonic()
        try:
            result: ScenarioResult = await module.run(ctx)
        except Exception as exc:
            # One broken scenario must not cost the numbers of the others;
            # the table and JSON show the error and the exit status is 1.
            result = ScenarioResult(key, SCENARIOS[key][1], error=f"{type(exc).__name__}: {exc}")
            ctx.log(f"{key} failed: {result.error}")
        result.seconds = time.monotonic() - started
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats: must be at least 1")
    if args.b2_rate and not set(args.b2_rate) <= {10, 1000, 5000}:
        parser.error("--b2-rate: must be 10, 1000 or 5000")
    if args.b1_writers and min(args.b1_writers) < 1:
        parser.error("--b1-writers: must be at least 1")
    if args.b6_backlog is not None and args.b6_backlog < 1:
        parser.error("--b6-backlog: must be at least 1")
    keys = _selected(args)
    admin_url = args.admin_url or admin_url_from_env()
    try:
        environment = env.collect(admin_url)
    except Exception as exc:
        print(
            f"python -m bench: error: cannot reach Postgres at --admin-url: {exc}", file=sys.stderr
        )
        return 1
    json_path = Path(args.json) if args.json else None
    if json_path and not json_path.parent.is_dir():
        parser.error(f"--json: directory {str(json_path.parent)!r} does not exist")
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        if profile_dir.exists() and not profile_dir.is_dir():
            parser.error(f"--profile: {str(profile_dir)!r} exists and is not a directory")
        profile_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.logs:
            workdir = Path(args.logs).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        ctx = Context(
            admin_url,
            args.smoke,
            workdir,
            args.repeats,
            args.quiet,
            profile_dir,
            args.b6_backlog,
            tuple(args.b1_writers) if args.b1_writers else None,
            tuple(args.b2_rate) if args.b2_rate else None,
        )
        started = time.monotonic()
        try:
            results = asyncio.run(_run_all(ctx, keys))
        except asyncio.CancelledError:
            print("python -m bench: interrupted; cleaned up", file=sys.stderr)
            return 130
    environment["load_average_end"] = env.load_average()
    print(table(results, markdown=args.markdown, smoke=args.smoke))
    if json_path:
        doc: dict[str, Any] = {
            "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "smoke": args.smoke,
            "seconds": round(time.monotonic() - started, 1),
            "environment": environment,
            "scenarios": {r.key: r.as_dict() for r in results},
        }
        json_path.write_text(json.dumps(doc, indent=2, default=str, allow_nan=True) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
