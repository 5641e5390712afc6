"""Rows into named types, matched by column name, never by position.

``psycopg.rows.class_row(cls)`` (a dataclass) builds each row from a dict
of its columns: a column the class does not know, or a field the query does
not return, raises. :func:`record_row` gives a ``NamedTuple`` the same
guarantee at a plain tuple's cost per row: the result's column names are
compared with the tuple's fields once per result (same names, same order,
else :class:`psycopg.ProgrammingError`), then each row is built
positionally. The feed reader reads thousands of rows a second; a dict per
row would cost it about a microsecond each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import BaseRowFactory, RowMaker, no_result

if TYPE_CHECKING:
    from psycopg._cursor_base import BaseCursor

R = TypeVar("R", bound=tuple[Any, ...])


def record_row(cls: type[R]) -> BaseRowFactory[R]:
    """Row factory: each row as ``cls``, a NamedTuple whose fields are the columns."""
    # mypy does not let a protocol describe a NamedTuple class; these two
    # attributes are there on every one.
    record: Any = cls
    fields: tuple[str, ...] = record._fields
    make: RowMaker[R] = record._make

    def factory(cursor: BaseCursor[Any, Any]) -> RowMaker[R]:
        if cursor.description is None:
            return no_result
        names = tuple(c.name for c in cursor.description)
        if names != fields:
            raise psycopg.ProgrammingError(
                f"{cls.__name__} has fields {fields}, the query returned {names}"
            )
        return make

    return factory
