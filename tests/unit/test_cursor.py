"""The feed cursor's text form: a round trip, and garbage refused."""

from __future__ import annotations

import pytest

from outbox.cursor import Cursor
from outbox.errors import CursorError


def test_cursor_round_trip_and_rejects_garbage() -> None:
    c = Cursor(42, 1000, (7, 9))
    assert Cursor.decode(c.encode()) == c
    for bad in ["", "x", "MTox", "!!!!", "MTotMToy", Cursor(1).encode() + "%%"]:
        with pytest.raises(CursorError):
            Cursor.decode(bad)
