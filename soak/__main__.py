"""``python -m soak [--minutes N] [--rate EVENTS_PER_MIN] [--clients N] [--short]``.

Exit status 0 when the oracle holds, 1 when it does not, 2 for bad flags.
Needs the test database server (``OUTBOX_TEST_ADMIN_URL``, default the local
one); makes and drops a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from soak.run import Plan, report, soak


def _positive(kind: type[float] | type[int], flag: str) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag}: must be positive, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n")[0])
    p.add_argument(
        "--minutes",
        type=_positive(float, "--minutes"),
        default=10.0,
        help="how long to write (default 10)",
    )
    p.add_argument(
        "--rate",
        type=_positive(float, "--rate"),
        default=5000.0,
        help="events per minute (default 5000)",
    )
    p.add_argument(
        "--clients",
        type=_positive(int, "--clients"),
        default=50,
        help="WebSocket clients, at most 200 (default 50)",
    )
    p.add_argument(
        "--short",
        action="store_true",
        help="the CI version: 25 s at 3000/min with 10 clients, under a minute in all",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clients > 200:
        parser.error("--clients: at most 200 (loopback clients are bounded)")
    if args.short:
        plan = Plan(seconds=25.0, rate_per_min=3000.0, clients=10)
    else:
        plan = Plan(seconds=args.minutes * 60.0, rate_per_min=args.rate, clients=args.clients)
    result = asyncio.run(soak(plan))
    print(report(result, plan))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
