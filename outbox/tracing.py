"""The writer's W3C trace context, stored on every event of its transaction.

A transaction that sets ``outbox.traceparent`` (``SET LOCAL`` or
``set_config(..., true)``) has it stored on every event it writes, by the
capture triggers and by ``outbox.publish``; the relay carries it to ``/ws``,
``/events``, webhook requests and sinks. :func:`set_trace_context` sets it
from the current OpenTelemetry span (``opentelemetry-api``, a dependency,
imported only when it is called; or pass the traceparent string yourself)::

    with session.begin():
        outbox.tracing.set_trace_context(session)   # the request's span
        session.add(order)

An invalid value is dropped with a warning (here and in the database),
never fails the write. The relay's side (its spans, the headers it sends) is
:mod:`outbox.relay.tracing`; docs/tracing.md has both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, overload

import psycopg

from outbox.sqlfiles import query

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("outbox.tracing")

TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
TRACESTATE_MAX = 512
_SQL = "tracing.sql"


def is_valid_traceparent(value: str) -> bool:
    """A W3C version-00 traceparent with non-zero trace and span ids."""
    m = TRACEPARENT_RE.match(value)
    if m is None:
        return False
    return set(m.group(1)) != {"0"} and set(m.group(2)) != {"0"}


def checked_traceparent(value: str | None) -> str | None:
    """``value`` if it is a valid traceparent, else None (with a warning)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not is_valid_traceparent(value):
        log.warning("outbox: ignoring invalid traceparent %.80r", value)
        return None
    return value


def _checked_tracestate(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > TRACESTATE_MAX:
        log.warning("outbox: ignoring a tracestate longer than %d characters", TRACESTATE_MAX)
        return None
    return value


def current_trace_context() -> tuple[str, str | None] | None:
    """(traceparent, tracestate) of the current OpenTelemetry span, or None
    when opentelemetry-api is not installed or no valid span is current."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    state = ctx.trace_state.to_header() if ctx.trace_state else None
    return parent, state or None


def _resolve(traceparent: str | None, tracestate: str | None) -> tuple[str, str] | None:
    if traceparent is None:
        found = current_trace_context()
        if found is None:
            return None
        traceparent, tracestate = found
    tp = checked_traceparent(traceparent)
    if tp is None:
        return None
    return tp, _checked_tracestate(tracestate) or ""


@overload
def set_trace_context(
    conn: psycopg.AsyncConnection[Any],
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Coroutine[Any, Any, str | None]: ...
@overload
def set_trace_context(
    conn: psycopg.Connection[Any] | Session,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> str | None: ...
def set_trace_context(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | Session,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> str | Coroutine[Any, Any, str | None] | None:
    """Set the transaction's trace context; return the traceparent set (or None).

    ``traceparent`` defaults to the current OpenTelemetry span's. Call it
    inside the transaction that writes (the setting ends with it). Sync and
    async psycopg connections (async: returns an awaitable) and
    SQLModel/SQLAlchemy sessions.
    """
    if isinstance(conn, psycopg.AsyncConnection):
        return aset_trace_context(conn, traceparent, tracestate)
    pair = _resolve(traceparent, tracestate)
    if pair is None:
        return None
    if isinstance(conn, psycopg.Connection):
        _warn_outside_transaction(conn)
        conn.execute(query("set_trace_context", _SQL), _params(pair))
    else:
        from sqlalchemy import text

        conn.execute(text(query("set_trace_context_session", _SQL)), _params(pair))
    return pair[0]


async def aset_trace_context(
    conn: psycopg.AsyncConnection[Any],
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> str | None:
    """:func:`set_trace_context` for an async psycopg connection."""
    pair = _resolve(traceparent, tracestate)
    if pair is None:
        return None
    _warn_outside_transaction(conn)
    await conn.execute(query("set_trace_context", _SQL), _params(pair))
    return pair[0]


def _params(pair: tuple[str, str | None]) -> dict[str, str | None]:
    return {"traceparent": pair[0], "tracestate": pair[1]}


def _warn_outside_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if conn.autocommit and idle:
        log.warning(
            "outbox: set_trace_context outside a transaction has no effect "
            "(autocommit connection): call it inside `with conn.transaction():`"
        )
