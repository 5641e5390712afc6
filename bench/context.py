"""What every scenario gets from the harness."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def interleaved(variants: Sequence[T], rep: int) -> list[T]:
    """The variants in the order of repetition ``rep``: rotated by one each time,
    so no variant always runs first (on a warm cache) or right after another."""
    k = rep % len(variants)
    return [*variants[k:], *variants[:k]]


@dataclass(frozen=True)
class Context:
    admin_url: str
    smoke: bool  # tiny sizes: exercise every code path in seconds, measure nothing
    workdir: Path  # scratch files (pgbench scripts, logs); removed after the run
    repeats: int | None = None  # overrides each scenario's default repetitions
    quiet: bool = False
    profile_dir: Path | None = None  # py-spy every outbox serve into this folder
    b6_backlog: int | None = None  # B6's backlog size (--b6-backlog)
    b1_writers: tuple[int, ...] | None = None  # B1's writer counts (--b1-writers)
    b2_rates: tuple[int, ...] | None = None  # B2's event rates (--b2-rates)

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def reps(self, default: int) -> int:
        if self.smoke:
            return 1
        return self.repeats or default
