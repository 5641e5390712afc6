"""The feed's no-skip / no-stall tests again, with the late lookup of
transactions at or above the cursor's xmax forced onto its other branch.

sql/feed.sql finds those late rows by walking the xids between the cursor's
xmax and the snapshot's (one index probe each), or, past RANGE_WALK_MAX xids,
by one range scan. The ordinary tests exercise the walk; here the threshold is
-1, so every read takes the range scan, and the same guarantees must hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from outbox.cursor import Cursor
from outbox.relay import feed
from tests.db.test_feed import (  # noqa: F401  (collected again here)
    test_cut_never_splits_a_transaction_that_ends_inside_the_page,
    test_lag_counts_committed_unread_events_including_late_ones,
    test_late_transaction_going_past_the_page_is_held_back_whole,
)
from tests.db.test_feed_core import (  # noqa: F401
    test_idle_transaction_with_xid_does_not_stall,
    test_out_of_order_commit_is_not_skipped,
    test_per_event_cursor_repeats_at_most_its_own_transaction,
    test_rolled_back_event_never_emitted,
    test_soak_emitted_equals_committed,
    test_transaction_events_come_out_together_in_causal_order,
)
from tests.db.test_feed_late_pages import (  # noqa: F401
    test_interleaved_late_transactions_random_commit_order,
    test_late_transaction_is_read_a_page_at_a_time,
)


@pytest.fixture(autouse=True)
def range_scan_branch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(feed, "RANGE_WALK_MAX", -1)
    yield


async def test_both_branches_read_the_same_rows(db_url: str) -> None:
    """A cursor whose xmax is behind: the walk and the range scan agree."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        start = await feed.head(c)
        await c.execute("SELECT outbox.publish('walk.a', '{}')")
        late: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(db_url)
        try:
            await late.execute("SELECT outbox.publish('walk.late', '{}')")
            await c.execute("SELECT outbox.publish('walk.b', '{}')")
            first = await feed.read_batch(c, start)
            await late.commit()
        finally:
            await late.close()
        await c.execute("SELECT outbox.publish('walk.c', '{}')")
        # As if the previous read had seen nothing finish: every row at or
        # below "after" of a committed transaction above the old xmax is late.
        behind = Cursor(first.end.after, start.xmax, first.end.pending, first.end.done)
        ranged = await feed.read_batch(c, behind)
        feed.RANGE_WALK_MAX = 10_000
        walked = await feed.read_batch(c, behind)
    assert [e.id for e in ranged.events] == [e.id for e in walked.events]
    # (The two ends differ in their snapshots only: the cluster is shared.)
    assert ranged.end.after == walked.end.after
    assert {e.type for e in ranged.events} >= {"walk.late", "walk.c"}
