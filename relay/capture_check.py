"""No silent stop: every capture rule's trigger and function, checked.

At start and every ``interval`` seconds, one query (``rules_check`` in
sql/capture.sql, ``outbox.track_check()``) compares each rule's trigger and
function with what the rule compiles to now. A missing, stale or disabled
trigger, or a rule whose table was dropped, is a problem: ``/health`` turns
``degraded`` naming the rule, ``/metrics`` counts rules by state, and the
log says it once when it appears and once when it is gone. ``outbox track``
with the same rule restores it. With the DDL event trigger installed
(sql/010) this rarely finds anything; without it (no superuser) it is what
protects the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from outbox.capture import RuleProblem, averify
from outbox.relay.metrics import Metrics
from outbox.relay.reconnect import CONNECTION_ERRORS, close_quietly, connect, describe, nap

log = logging.getLogger("outbox.relay.capture")

CAPTURE_CHECK_INTERVAL = 60.0
STATES = ("ok", "missing", "stale", "disabled", "detached", "broken")


class CaptureCheck:
    def __init__(
        self,
        database_url: str,
        metrics: Metrics,
        *,
        instance: str,
        interval: float = CAPTURE_CHECK_INTERVAL,
    ) -> None:
        self.database_url = database_url
        self.instance = instance
        self.interval = interval
        self.rules = 0
        self.problems: list[RuleProblem] = []
        self.checked_at: float | None = None
        self.error: str | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        metrics.gauge(
            "outbox_capture_rules",
            "Capture rules by the state of their trigger (ok, missing, stale, disabled, "
            "detached, broken)",
            self._by_state,
        )

    def _by_state(self) -> dict[str, float]:
        counts = dict.fromkeys(STATES, 0.0)
        for p in self.problems:
            counts[p.state] = counts.get(p.state, 0.0) + 1
        counts["ok"] = float(self.rules - len(self.problems))
        return {f"state={k}": v for k, v in counts.items()}

    async def check_now(self) -> None:
        """One check on a connection of its own; never raises for the database."""
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await connect(self.database_url, f"outbox capture check {self.instance}")
            rules, problems = await averify(conn)
        except CONNECTION_ERRORS as exc:
            self.error = describe(exc)
            return
        except psycopg.Error as exc:  # e.g. the schema is older than the check
            self.error = describe(exc)
            return
        finally:
            await close_quietly(conn)
        before = {p.rule for p in self.problems}
        now = {p.rule for p in problems}
        for p in problems:
            if p.rule not in before:
                log.warning(
                    "capture rule %s is %s: %s (outbox track with the same rule restores it)",
                    p.rule,
                    p.state,
                    p.detail,
                )
        for rule in sorted(before - now):
            log.info("capture rule %s is capturing again", rule)
        self.rules, self.problems = rules, problems
        self.checked_at, self.error = time.time(), None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            await self.check_now()
            await nap(self._wake, self.interval)

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def health(self) -> dict[str, Any]:
        return {
            "rules": self.rules,
            "checked_at": self.checked_at,
            "error": self.error,
            "problems": [
                {"rule": p.rule, "state": p.state, "detail": p.detail} for p in self.problems
            ],
        }
