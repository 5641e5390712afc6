"""Reading SQL text: the NOTIFY channel and advisory-lock key a statement uses."""

from __future__ import annotations

import re

NOTIFY_CALL = re.compile(r"pg_notify\(\s*'([^']*)'")
LOCK_CALL = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?lock(?:_shared)?\(\s*(-?\d+)")
