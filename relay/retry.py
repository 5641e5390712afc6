"""When a failed webhook attempt is tried again, and where the wait happens.

The policy is pure (attempt numbers and results in, delays out); the
delivery worker's loop runs the short in-memory retries of one claim:

* a failed attempt is retried unless it was the last one of
  ``OUTBOX_RETRY_SCHEDULE`` or the endpoint answered 410 Gone;
* attempt *n* (1-based) is followed by ``schedule[n-1]``, or by the
  receiver's ``Retry-After`` on 429/503 when that is longer (capped at
  :data:`MAX_RETRY_AFTER`);
* a wait of at most ``memory_max`` seconds that still fits in the claim's
  lease is slept in memory; any other wait ends the claim and is stored in
  the delivery row (``due_at``/``next_retry_at``), so a restart loses no retry.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

#: A Retry-After longer than this is taken as this.
MAX_RETRY_AFTER = 24 * 3600.0
#: Waits up to this long may be slept in memory between attempts of one claim.
MEMORY_MAX = 5.0
_RETRY_AFTER_STATUSES = (429, 503)


@dataclass(slots=True)
class AttemptResult:
    """What one HTTP attempt produced (an error, or a status and a body)."""

    attempt: int
    started_at: float  # unix time
    duration: float  # seconds
    status: int | None = None
    body: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    # For the console's inspector (sql/004_console.sql): what was sent, with
    # signature values redacted, and the response's headers.
    request_headers: dict[str, str] | None = None
    response_headers: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class RetryPolicy:
    """The retry schedule as a pure function of the attempt number and result."""

    def __init__(self, schedule: Sequence[timedelta], memory_max: float = MEMORY_MAX) -> None:
        self.delays = tuple(d.total_seconds() for d in schedule)
        self.max_attempts = len(self.delays) + 1
        self.memory_max = memory_max

    def delay(self, result: AttemptResult) -> float | None:
        """Seconds until the next attempt after ``result``, or ``None``: no more attempts.

        ``delay = max(schedule[n-1], retry_after)`` for attempt ``n < max_attempts``
        (``retry_after`` only counts on 429 and 503).
        """
        if result.ok or result.gone or result.attempt >= self.max_attempts:
            return None
        wait = self.delays[max(result.attempt, 1) - 1]
        if result.status in _RETRY_AFTER_STATUSES and result.retry_after is not None:
            wait = max(wait, result.retry_after)
        return wait
