"""When a failed webhook attempt is tried again: the policy, as tenacity strategies.

tenacity makes every retry decision, for the short in-memory retries of one
claim and for the waits stored in the delivery row alike:

* **retry** (``retry_if_result``): an attempt is retried unless it succeeded
  (a complete 2xx) or the endpoint answered 410 Gone;
* **wait**: ``OUTBOX_RETRY_SCHEDULE`` — either the stored list of delays
  (attempt *n* is followed by ``schedule[n-1]``) or its exponential form with
  full jitter (``exponential(5s,10h,8)``: tenacity's
  ``wait_random_exponential``) — and, on 429/503, the receiver's
  ``Retry-After`` when that is longer (capped at :data:`MAX_RETRY_AFTER`);
* **stop**: after the schedule's number of attempts
  (``stop_after_attempt``), and, with ``OUTBOX_RETRY_MAX_AGE``, before an
  attempt would fall later than that after the event (``stop_before_delay``).

The state tenacity judges is the delivery's stored state, not a counter in
memory: :func:`adopt_stored_state` (tenacity's ``after`` hook) sets the
``RetryCallState``'s attempt number to the attempt number kept in the row
and its start to the event's time, so the stock strategies continue a
delivery's schedule exactly where it stood, after a restart or on another
worker. The delivery worker (:mod:`relay.delivery.worker`) runs the short retries
of one claim with :meth:`RetryPolicy.in_memory` (``AsyncRetrying`` around
the network call only, never around a database write) and stores any longer
wait given by :meth:`RetryPolicy.next_delay` in the row.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import tenacity
from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base

#: A Retry-After longer than this is taken as this.
MAX_RETRY_AFTER = 24 * 3600.0
#: Waits up to this long may be slept in memory between attempts of one claim.
MEMORY_MAX = 5.0
_RETRY_AFTER_STATUSES = frozenset((429, 503))


@dataclass(slots=True)
class AttemptResult:
    """What one HTTP attempt produced (an error, or a status and a body)."""

    attempt: int  # the delivery's attempt number (1-based), as stored
    started_at: float  # unix time
    duration: float  # seconds
    status: int | None = None
    body: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    age: float = 0.0  # seconds from the event's creation to the end of this attempt
    # For the console's inspector (sql/004_console.sql): what was sent, with
    # signature values redacted, and the response's headers.
    request_headers: dict[str, str] | None = None
    response_headers: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        """A complete, valid 2xx response (a 2xx whose body broke is not)."""
        return self.error_class is None and self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``.

    Never raises: a value that is neither (``²``, ``-1``, ``soon``) is ignored.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    try:
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (OverflowError, OSError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --- the schedule as configured ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exponential:
    """``exponential(first,max,attempts)``: full-jitter exponential waits."""

    first: timedelta
    maximum: timedelta
    attempts: int

    def __str__(self) -> str:
        return f"exponential({self.first},{self.maximum},{self.attempts})"


Schedule = tuple[timedelta, ...] | Exponential


# --- tenacity strategies ------------------------------------------------------------


def _result(rs: RetryCallState) -> AttemptResult:
    assert rs.outcome is not None
    result = rs.outcome.result()
    assert isinstance(result, AttemptResult)
    return result


def adopt_stored_state(rs: RetryCallState) -> None:
    """tenacity ``after`` hook: judge the delivery's stored state, not this call's.

    The attempt number becomes the one stored in the delivery row, and the
    start of the retrying the event's creation, so ``stop_after_attempt``,
    ``stop_before_delay`` and the waits continue the delivery's schedule.
    """
    result = _result(rs)
    rs.attempt_number = result.attempt
    assert rs.outcome_timestamp is not None
    rs.start_time = rs.outcome_timestamp - result.age


class wait_schedule(wait_base):
    """The stored ``OUTBOX_RETRY_SCHEDULE``: attempt *n* is followed by ``delays[n-1]``."""

    def __init__(self, delays: Sequence[float]) -> None:
        self.delays = tuple(delays)

    def __call__(self, retry_state: RetryCallState) -> float:
        n = min(max(retry_state.attempt_number, 1), len(self.delays))
        return self.delays[n - 1]


class wait_retry_after(wait_base):
    """``base``, or the receiver's ``Retry-After`` on 429/503 when that is longer."""

    def __init__(self, base: wait_base) -> None:
        self.base = base

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.base(retry_state))
        result = _result(retry_state)
        if result.status in _RETRY_AFTER_STATUSES and result.retry_after is not None:
            wait = max(wait, result.retry_after)
        return wait


class InMemoryRun(Protocol):
    """One claim's short retries, as :meth:`RetryPolicy.in_memory` runs them."""

    #: The network call (all that tenacity wraps).
    attempt: Callable[[], Awaitable[AttemptResult]]

    def fits(self, wait: float) -> bool:
        """Whether a wait of ``wait`` seconds may be slept in memory."""

    def hold(self, result: AttemptResult, wait: float) -> None:
        """Before an in-memory wait: ``result`` is recorded, the claim kept."""


def _run(rs: RetryCallState) -> InMemoryRun:
    run = rs.args[0]
    return run  # type: ignore[no-any-return]


class stop_unless_it_fits(stop_base):
    """Stop the in-memory run when its wait does not fit (it is stored instead)."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not _run(retry_state).fits(retry_state.upcoming_sleep)


def _hold(rs: RetryCallState) -> None:
    _run(rs).hold(_result(rs), rs.upcoming_sleep)


async def _attempt(run: InMemoryRun) -> AttemptResult:
    return await run.attempt()


def _retryable(result: Any) -> bool:
    return isinstance(result, AttemptResult) and not result.ok and not result.gone


@dataclass(slots=True)
class Stored:
    """How an in-memory run of retries ended without a final answer."""

    result: AttemptResult
    delay: float | None  # until the next attempt, to store; None: no attempt follows


class RetryPolicy:
    """The retry policy of every delivery, as tenacity strategies (see the module docstring)."""

    def __init__(
        self,
        schedule: Schedule,
        *,
        max_age: timedelta | None = None,
        memory_max: float = MEMORY_MAX,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        base: wait_base
        if isinstance(schedule, Exponential):
            self.max_attempts = schedule.attempts
            base = tenacity.wait_random_exponential(
                multiplier=schedule.first.total_seconds(),
                max=schedule.maximum.total_seconds(),
            )
        else:
            delays = tuple(d.total_seconds() for d in schedule)
            self.max_attempts = len(delays) + 1
            base = wait_schedule(delays)
        self.memory_max = memory_max
        self.retry = tenacity.retry_if_result(_retryable)
        self.wait: wait_base = wait_retry_after(base)
        self.stop: stop_base = tenacity.stop_after_attempt(self.max_attempts)
        if max_age is not None:
            self.stop = self.stop | tenacity.stop_before_delay(max_age.total_seconds())
        # The durable decision: tenacity's own iteration over one stored outcome.
        self._decide = tenacity.Retrying(
            retry=self.retry,
            wait=self.wait,
            stop=self.stop,
            after=adopt_stored_state,
            retry_error_callback=lambda _rs: None,
            sleep=lambda _s: None,
        )
        # One AsyncRetrying for every delivery: a call keeps its state in its
        # own RetryCallState, and every strategy and hook here is synchronous,
        # so concurrent calls never interleave inside tenacity's iteration.
        self._in_memory = tenacity.AsyncRetrying(
            retry=self.retry,
            wait=self.wait,
            stop=self.stop | stop_unless_it_fits(),
            after=adopt_stored_state,
            before_sleep=_hold,
            retry_error_callback=self._stored,
            sleep=sleep,
        )

    def next_delay(self, result: AttemptResult) -> float | None:
        """Seconds until the next attempt after ``result``, or ``None``: no more attempts."""
        self._decide.begin()  # tenacity's statistics (per thread), which iter() updates
        rs = RetryCallState(self._decide, fn=None, args=(), kwargs={})
        rs.set_result(result)
        action = self._decide.iter(rs)
        if isinstance(action, tenacity.DoSleep):
            return float(action)
        return None

    def _stored(self, rs: RetryCallState) -> Stored:
        # retry_error_callback: the in-memory run stopped on a retryable result.
        # Either the policy stops (no more attempts) or the wait must be stored.
        exhausted = self.stop(rs)
        return Stored(_result(rs), None if exhausted else rs.upcoming_sleep)

    async def in_memory(self, run: InMemoryRun) -> AttemptResult | Stored:
        """Run ``run.attempt`` and its retries whose wait ``run.fits`` in memory.

        Returns the final result (success, or no retry: 410), or :class:`Stored`:
        the last result and the wait to store (``None``: exhausted).
        ``run.hold(result, wait)`` runs before each in-memory wait, and the
        policy's ``sleep`` sleeps it (it may raise to abandon the run).

        The first attempt's outcome is judged by the policy's ``retry``
        strategy alone: when tenacity's ``retry_if_result`` says no retry
        (a success, a 410), that is the answer, without a whole
        ``AsyncRetrying`` run around one call (21 µs per delivery, ~5% of the
        sender's CPU in B4; BENCHMARKS.md). Otherwise ``AsyncRetrying`` runs
        from that outcome (:class:`_FirstKnown` gives it as the first call's
        result), so every wait and stop is still tenacity's.
        """
        first = await run.attempt()
        state = RetryCallState(self._in_memory, fn=None, args=(), kwargs={})
        state.set_result(first)
        if not self.retry(state):
            return first
        outcome: AttemptResult | Stored = await self._in_memory(_attempt, _FirstKnown(run, first))
        return outcome


class _FirstKnown:
    """``run``, whose first attempt has already been made: it returned ``first``."""

    __slots__ = ("first", "run")

    def __init__(self, run: InMemoryRun, first: AttemptResult) -> None:
        self.run = run
        self.first: AttemptResult | None = first

    async def attempt(self) -> AttemptResult:
        first, self.first = self.first, None
        return first if first is not None else await self.run.attempt()

    def fits(self, wait: float) -> bool:
        return self.run.fits(wait)

    def hold(self, result: AttemptResult, wait: float) -> None:
        self.run.hold(result, wait)
