"""Progress is health: has a loop moved forward lately, and do event ids only grow?

A process can be connected and answering and still do nothing useful: the
feed reader's reads time out, the dispatcher's statement waits on a lock,
the leadership flips between processes every few seconds. :class:`Progress`
records, per loop, when it last moved forward, what went wrong since and
what it is doing now; ``/health`` turns "no progress for longer than
``OUTBOX_STALL_AFTER`` while events wait" into ``degraded``, naming the part
and the reason.

Event ids come from ``outbox.events_id_seq``. ``TRUNCATE outbox.events
RESTART IDENTITY`` (or ``ALTER SEQUENCE ... RESTART``, ``setval``) would make
them start again at 1, so new events would reuse ids that receivers have
already seen as ``webhook-id: evt_N`` (and de-duplicate away), and the
dispatcher's unique (webhook, event) key would silently drop them. Two
guards: migration 009 puts the sequence back after a ``TRUNCATE``, and the
dispatcher refuses to dispatch while the sequence is below its cursor
(:func:`ids_went_backwards`), saying how to recover: ``outbox repair
--fix-sequence``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import psycopg
from psycopg.rows import scalar_row

from outbox.sqlfiles import query

REPAIR = "outbox repair --fix-sequence"


class Progress:
    """When a loop last moved forward, and what went wrong since."""

    __slots__ = ("busy_since", "doing", "failures", "last_error", "last_ok", "refusing")

    def __init__(self) -> None:
        self.last_ok = time.monotonic()
        self.failures = 0  # since the last success
        self.last_error: str | None = None
        self.refusing: str | None = None  # a reason it will not go on (ids went backwards)
        self.doing: str | None = None
        self.busy_since: float | None = None

    def start(self, doing: str) -> None:
        self.doing, self.busy_since = doing, time.monotonic()

    def ok(self) -> None:
        self.last_ok = time.monotonic()
        self.failures, self.last_error, self.refusing = 0, None, None
        self.doing = self.busy_since = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.doing = self.busy_since = None

    def refuse(self, reason: str) -> None:
        self.refusing = reason
        self.doing = self.busy_since = None

    def idle(self) -> None:
        """Nothing to do is progress too."""
        self.ok()

    def since_ok(self) -> float:
        return time.monotonic() - self.last_ok

    def why(self) -> str:
        """What kept it from moving forward, as far as this process knows."""
        if self.refusing:
            return self.refusing
        parts = []
        if self.doing and self.busy_since is not None:
            parts.append(f"{self.doing} running for {time.monotonic() - self.busy_since:.0f}s")
        if self.failures:
            parts.append(f"{self.failures} failures in a row, last: {self.last_error}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds_since_progress": round(self.since_ok(), 1),
            "failures": self.failures,
            "last_error": self.last_error,
            "refusing": self.refusing,
        }


class Terms:
    """When leadership terms began, to tell a flapping leadership from a steady one."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._starts: deque[float] = deque(maxlen=1000)

    def began(self) -> None:
        self._starts.append(time.monotonic())

    def recent(self) -> int:
        horizon = time.monotonic() - self.window
        return sum(1 for t in self._starts if t >= horizon)


async def sequence_high(conn: psycopg.AsyncConnection[Any]) -> int:
    """The largest event id drawn so far, as the sequence says."""
    cur = conn.cursor(row_factory=scalar_row)
    await cur.execute(query("event_id_high", "progress.sql"))
    value = await cur.fetchone()
    return int(value or 0)


def ids_went_backwards(high: int, after: int, whose: str = "dispatcher") -> str | None:
    """The degraded message when the sequence (``high``) is below a cursor's ``after``."""
    if high >= after:
        return None
    return (
        f"event ids went backwards: the {whose} cursor is after id {after} but the id "
        f"sequence is at {high} (outbox.events truncated with RESTART IDENTITY, or "
        f"outbox.events_id_seq reset). Nothing is dispatched until it is repaired, so no "
        f"event reuses an id receivers have seen: run `{REPAIR}`"
    )
