"""outbox.rows.record_row: rows as NamedTuples, matched by column name."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import psycopg
import pytest

from outbox.rows import record_row


class Pair(NamedTuple):
    id: int
    name: str


def _cursor(*columns: str) -> Any:
    return SimpleNamespace(description=[SimpleNamespace(name=c) for c in columns])


def test_columns_that_match_the_fields_build_the_tuple() -> None:
    make = record_row(Pair)(_cursor("id", "name"))
    row = make((7, "seven"))
    assert row == Pair(7, "seven") and row.name == "seven"


@pytest.mark.parametrize(
    "columns", [("name", "id"), ("id",), ("id", "name", "extra"), ("id", "label")]
)
def test_columns_in_another_order_or_set_raise(columns: tuple[str, ...]) -> None:
    with pytest.raises(psycopg.ProgrammingError, match="Pair has fields"):
        record_row(Pair)(_cursor(*columns))


def test_a_statement_without_rows_gives_no_result() -> None:
    make = record_row(Pair)(SimpleNamespace(description=None))
    with pytest.raises(psycopg.InterfaceError):
        make((1, "x"))
