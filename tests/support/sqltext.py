"""Reading SQL text: the NOTIFY channel and advisory-lock key a statement uses."""

from __future__ import annotations

import re

# The quote may be doubled: the capture compiler (sql/010) writes the call
# inside a string literal of the trigger source it generates.
NOTIFY_CALL = re.compile(r"pg_notify\(\s*''?([^']*)'")
LOCK_CALL = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?lock(?:_shared)?\(\s*(-?\d+)")
