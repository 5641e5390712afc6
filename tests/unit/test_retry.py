"""The retry policy as tenacity strategies (relay/delivery/retry.py): no database, no sockets."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from outbox.errors import ConfigError
from outbox.relay.config import DeliverySettings, parse_schedule
from outbox.relay.delivery.retry import (
    MAX_RETRY_AFTER,
    AttemptResult,
    Exponential,
    RetryPolicy,
    Stored,
    parse_retry_after,
)

SCHEDULE = parse_schedule("5s,5m,30m")  # 4 attempts


def result(attempt: int, status: int | None = 500, **kw: object) -> AttemptResult:
    return AttemptResult(attempt=attempt, started_at=0.0, duration=0.01, status=status, **kw)  # type: ignore[arg-type]


def test_stored_schedule_continues_from_the_stored_attempt_number() -> None:
    policy = RetryPolicy(SCHEDULE)
    # As after a restart: only the stored attempt number is known.
    assert [policy.next_delay(result(n)) for n in (1, 2, 3, 4)] == [5.0, 300.0, 1800.0, None]


def test_success_and_410_are_never_retried() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert policy.next_delay(result(1, 200)) is None
    assert policy.next_delay(result(1, 410)) is None
    assert policy.next_delay(result(1, 204)) is None


@pytest.mark.parametrize("status", [None, 301, 400, 404, 408, 429, 500, 502, 503])
def test_every_other_outcome_is_retried(status: int | None) -> None:
    r = result(1, status, error_class="ConnectError" if status is None else None)
    assert RetryPolicy(SCHEDULE).next_delay(r) == 5.0


def test_a_2xx_that_did_not_complete_is_retried() -> None:
    r = result(1, 200, error_class="Timeout", error_message="response body incomplete")
    assert not r.ok
    assert RetryPolicy(SCHEDULE).next_delay(r) == 5.0


def test_retry_after_counts_on_429_and_503_when_longer() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert policy.next_delay(result(1, 429, retry_after=120.0)) == 120.0
    assert policy.next_delay(result(1, 503, retry_after=1.0)) == 5.0  # schedule is longer
    assert policy.next_delay(result(1, 500, retry_after=120.0)) == 5.0  # not on a 500
    assert policy.next_delay(result(4, 503, retry_after=1.0)) is None  # the last attempt


def test_max_age_stops_before_an_attempt_would_be_too_late() -> None:
    policy = RetryPolicy(SCHEDULE, max_age=timedelta(minutes=10))
    assert policy.next_delay(result(1, age=60.0)) == 5.0
    assert policy.next_delay(result(2, age=400.0)) is None  # 400 s + 300 s > 10 min


def test_exponential_form_with_jitter() -> None:
    policy = RetryPolicy(parse_schedule("exponential(2s,60s,5)"))
    assert policy.max_attempts == 5
    for attempt, cap in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)):
        waits = {policy.next_delay(result(attempt)) for _ in range(50)}
        assert all(w is not None and 0.0 <= w <= cap for w in waits), (attempt, waits)
        assert len(waits) > 1  # jittered
    assert policy.next_delay(result(5)) is None


def test_schedule_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_schedule("exp(5s,10h,8)") == Exponential(
        timedelta(seconds=5), timedelta(hours=10), 8
    )
    for bad in ("exponential(5s,1s,3)", "exponential(5s,10h,0)", "exponential(5s,10h,x)", ""):
        with pytest.raises(ConfigError, match="OUTBOX_RETRY_SCHEDULE"):
            parse_schedule(bad)
    monkeypatch.setenv("OUTBOX_RETRY_SCHEDULE", "exponential(1s,1m,4)")
    monkeypatch.setenv("OUTBOX_RETRY_MAX_AGE", "2h")
    settings = DeliverySettings()  # read from the environment
    assert isinstance(settings.retry_schedule, Exponential)
    assert settings.retry_max_age == timedelta(hours=2)
    monkeypatch.delenv("OUTBOX_RETRY_SCHEDULE")
    monkeypatch.delenv("OUTBOX_RETRY_MAX_AGE")
    assert DeliverySettings().retry_max_age is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("99999999", MAX_RETRY_AFTER),
        ("²", None),  # str.isdigit() says yes; float() says no
        ("١٢", None),  # Arabic-Indic digits
        ("-1", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone
        ("Sun, 06 Nov 9999999 08:49:37 GMT", None),
    ],
)
def test_parse_retry_after_never_raises(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


class Run:
    """An InMemoryRun over scripted statuses."""

    def __init__(self, statuses: list[int], first: int = 1, fits_up_to: float = 1.0) -> None:
        self.statuses = iter(statuses)
        self.n = first - 1
        self.fits_up_to = fits_up_to
        self.held: list[tuple[int, float]] = []

    async def attempt(self) -> AttemptResult:
        self.n += 1
        return result(self.n, next(self.statuses))

    def fits(self, wait: float) -> bool:
        return wait <= self.fits_up_to

    def hold(self, r: AttemptResult, wait: float) -> None:
        self.held.append((r.attempt, wait))


async def test_in_memory_retries_run_under_tenacity() -> None:
    slept: list[float] = []

    async def sleep(wait: float) -> None:
        slept.append(wait)
        await asyncio.sleep(0)

    policy = RetryPolicy(parse_schedule("10ms,10ms,1h"), sleep=sleep)
    run = Run([500, 503, 500])
    outcome = await policy.in_memory(run)
    # Two short waits in memory, then the hour is stored.
    assert run.held == [(1, 0.01), (2, 0.01)] and slept == [0.01, 0.01]
    assert isinstance(outcome, Stored) and outcome.delay == 3600.0
    assert outcome.result.attempt == 3


async def test_in_memory_run_ends_on_success_or_exhaustion() -> None:
    async def never_sleep(_wait: float) -> None:
        return None

    policy = RetryPolicy(parse_schedule("10ms"), sleep=never_sleep)
    ok = await policy.in_memory(Run([500, 200]))
    assert isinstance(ok, AttemptResult) and ok.ok and ok.attempt == 2
    # The stored state says attempt 2 is already the last one.
    exhausted = await policy.in_memory(Run([500], first=2))
    assert isinstance(exhausted, Stored) and exhausted.delay is None


async def test_concurrent_runs_share_one_policy() -> None:
    async def sleep(wait: float) -> None:
        await asyncio.sleep(wait)

    policy = RetryPolicy(parse_schedule("1ms,1ms,1ms"), sleep=sleep)
    runs = [Run([500] * (i % 4) + [200]) for i in range(20)]
    outcomes = await asyncio.gather(*(policy.in_memory(r) for r in runs))
    assert all(isinstance(o, AttemptResult) and o.ok for o in outcomes)
    assert [o.attempt for o in outcomes[:4]] == [1, 2, 3, 4]  # type: ignore[union-attr]


async def test_a_raising_sleep_abandons_the_run() -> None:
    async def stopping(_wait: float) -> None:
        raise RuntimeError("stopping")

    policy = RetryPolicy(parse_schedule("10ms"), sleep=stopping)
    run = Run([500, 200])
    with pytest.raises(RuntimeError, match="stopping"):
        await policy.in_memory(run)
    assert run.held == [(1, 0.01)]


async def test_a_first_attempt_needing_no_retry_is_the_answer() -> None:
    async def never_sleep(_wait: float) -> None:
        raise AssertionError("no wait expected")

    policy = RetryPolicy(parse_schedule("10ms"), sleep=never_sleep)
    for status in (200, 410):
        run = Run([status])
        outcome = await policy.in_memory(run)
        assert isinstance(outcome, AttemptResult) and outcome.status == status
        assert outcome.attempt == 1 and run.held == []
