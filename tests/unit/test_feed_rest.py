"""The feed loop's choice between polling and falling asleep (relay/runtime.py)."""

from __future__ import annotations

from collections import deque

from outbox.relay import runtime
from outbox.relay.runtime import QUIET_BEFORE_SLEEP, TRICKLE_GAP, TRICKLE_READS, FeedLoop


def _quiet(times: list[float]) -> float:
    loop = object.__new__(FeedLoop)  # only the read history is needed
    loop._busy_reads = deque(times, maxlen=TRICKLE_READS)
    return runtime.FeedLoop._quiet_before_sleep(loop)


def test_a_relay_that_saw_few_events_keeps_the_window() -> None:
    assert _quiet([]) == QUIET_BEFORE_SLEEP
    assert _quiet([i * 1.0 for i in range(TRICKLE_READS - 1)]) == QUIET_BEFORE_SLEEP


def test_a_trickle_sleeps_at_once_a_stream_keeps_polling() -> None:
    slow = [i * TRICKLE_GAP * 2 for i in range(TRICKLE_READS)]
    fast = [i * TRICKLE_GAP / 2 for i in range(TRICKLE_READS)]
    assert _quiet(slow) == 0.0
    assert _quiet(fast) == QUIET_BEFORE_SLEEP
    # One burst among slow events: the average gap decides.
    mixed = [*slow[:-1], slow[-2] + 0.001]
    assert _quiet(mixed) == 0.0
