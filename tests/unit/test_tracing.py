"""outbox.tracing without a database: the Python helpers validate traceparent as the
SQL does (the stored and carried side is tests/db/test_keys_trace.py)."""

from __future__ import annotations

import pytest

from outbox.tracing import is_valid_traceparent
from tests.support.tracing import BAD, TP


def test_python_helpers_validate_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    assert is_valid_traceparent(TP)
    assert not any(is_valid_traceparent(b) for b in BAD)
