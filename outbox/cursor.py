"""The resume cursor: an opaque string from which any consumer resumes with
no gap (repeats allowed, always with the same event id).

A cursor is ``(after, xmax, pending)``: every committed event with
``id <= after`` has been emitted, except those written by transactions that
the read producing the cursor saw as still in progress: the xids listed in
``pending`` (its snapshot's xip, plus any deliberately held back) and any xid
at or above its snapshot's ``xmax``. See relay/feed.py for why that is enough.

A cursor can point inside a transaction: ``done`` maps some pending xids to
the largest id of theirs already emitted (their rows at or below it are
passed; the rest are not). Encoded as ``xid.id`` in the pending list, so a
cursor without positions reads as before.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from outbox.errors import CursorError

_VERSION = "1"
_MAX_PENDING = 100_000


def pending_csv(xids: tuple[int, ...] | list[int], done: dict[int, int]) -> str:
    """Sorted pending xids as text, each partly emitted one as ``xid.id``."""
    return ",".join(f"{x}.{done[x]}" if done.get(x) else str(x) for x in sorted(xids))


def encode_parts(after: int, xmax: int, pending_csv: str) -> str:
    """Encode a cursor from its parts; ``pending_csv`` is the sorted xids, comma-separated.

    For callers that build many cursors sharing one pending list.
    """
    raw = f"{_VERSION}:{after}:{xmax}:{pending_csv}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Cursor:
    after: int
    xmax: int = 0
    pending: tuple[int, ...] = ()
    # (xid, largest id emitted) for pending xids partly emitted; xid in pending.
    done: tuple[tuple[int, int], ...] = ()

    def encode(self) -> str:
        return encode_parts(self.after, self.xmax, pending_csv(self.pending, dict(self.done)))

    def position(self, xid: int) -> int:
        """The largest id of pending ``xid`` already emitted (0: none)."""
        for x, k in self.done:
            if x == xid:
                return k
        return 0

    @classmethod
    def decode(cls, text: str) -> Cursor:
        if not isinstance(text, str) or not text or len(text) > 4 * 1024 * 1024:
            raise CursorError("invalid cursor")
        try:
            padded = (text + "=" * (-len(text) % 4)).encode("ascii")
            raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
            version, after, xmax, pending = raw.split(":")
            if version != _VERSION:
                raise ValueError(version)
            xids: list[int] = []
            done: list[tuple[int, int]] = []
            for item in pending.split(","):
                if not item:
                    continue
                xid, dot, pos = item.partition(".")
                xids.append(int(xid))
                if dot:
                    done.append((int(xid), int(pos)))
            value = cls(int(after), int(xmax), tuple(xids), tuple(done))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise CursorError("invalid cursor") from None
        if (
            value.after < 0
            or value.xmax < 0
            or any(x <= 0 for x in value.pending)
            or any(k <= 0 for _, k in value.done)
            or len(xids) > _MAX_PENDING
        ):
            raise CursorError("invalid cursor")
        return value

    def __str__(self) -> str:
        return self.encode()


def sql_params(
    cursor: Cursor | None, *, prefix: str = ""
) -> dict[str, int | str | list[str] | list[int] | None]:
    """A cursor as the parameters ``after``, ``xmax`` and ``pending`` of the SQL
    that reads after it (sql/feed.sql, sql/retention.sql, sql/api.sql), each
    name behind ``prefix`` when a statement takes two cursors.

    The xids go as text (the SQL casts them ``::text::xid8``): psycopg has no
    adapter for xid8. ``None`` (no cursor: an open bound) gives ``after``
    NULL, which the statements read as "no bound".
    """
    if cursor is None:
        return {
            f"{prefix}after": None,
            f"{prefix}xmax": "0",
            f"{prefix}pending": [],
            f"{prefix}pending_done": [],
        }
    done = dict(cursor.done)
    return {
        f"{prefix}after": cursor.after,
        f"{prefix}xmax": str(cursor.xmax),
        f"{prefix}pending": [str(x) for x in cursor.pending],
        # The feed read's page of late rows starts after these (sql/feed.sql);
        # other statements treat a partly emitted xid as wholly pending.
        f"{prefix}pending_done": [done.get(x, 0) for x in cursor.pending],
    }


def meet(a: Cursor, b: Cursor) -> Cursor:
    """The cursor that has passed exactly what both ``a`` and ``b`` have passed.

    A transaction one of them names (lists, or at/above its xmax) stays named:
    the smaller ``after`` and ``xmax``, every listed xid, and a position only
    where both have passed part of the transaction (the smaller one). Reading
    from it misses nothing either of them has not passed (relay/feed.py).
    """
    pos_a, pos_b = dict(a.done), dict(b.done)
    xmax = min(a.xmax, b.xmax)
    pending = sorted(set(a.pending) | set(b.pending))

    def passed_part(c: Cursor, pos: dict[int, int], xid: int) -> int | None:
        # How much of ``xid`` ``c`` has passed: None = all (it does not name it).
        if xid in pos:
            return pos[xid]
        if xid in c.pending or xid >= c.xmax:
            return 0
        return None

    done = []
    for x in pending:
        ka, kb = passed_part(a, pos_a, x), passed_part(b, pos_b, x)
        k = min(v for v in (ka, kb) if v is not None) if (ka, kb) != (None, None) else 0
        if k:
            done.append((x, k))
    return Cursor(min(a.after, b.after), xmax, tuple(pending), tuple(done))


def passed(cursor: Cursor, event_id: int, xid: int) -> bool:
    """Whether ``cursor`` has passed (emitted) the committed event ``(event_id, xid)``."""
    if event_id > cursor.after:
        return False
    if xid in cursor.pending:
        k = dict(cursor.done).get(xid, 0)
        return 0 < event_id <= k
    return xid < cursor.xmax
