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


def test_a_meet_with_a_cursor_ahead_reads_as_the_cursor_itself() -> None:
    """A full join read is kept as the feed loop's own batch only when the
    meet has passed exactly what the loop's cursor has (runtime.same_reach)."""
    from outbox.cursor import Cursor, meet

    mine = Cursor(100, 50, (45,), ((45, 90),))
    ahead = Cursor(200, 60, (55,))  # 55 >= my xmax: named by it already
    assert runtime.same_reach(meet(mine, ahead), mine)
    assert not runtime.same_reach(meet(mine, Cursor(80, 40)), mine)  # behind
    # Passed less of a transaction I am inside of.
    assert not runtime.same_reach(meet(mine, Cursor(200, 60, (45,), ((45, 70),))), mine)
    # Still waits for a transaction below my xmax that I passed whole.
    assert not runtime.same_reach(meet(mine, Cursor(200, 60, (47,))), mine)
    assert runtime.same_reach(mine, mine)
