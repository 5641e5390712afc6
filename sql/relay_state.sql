-- Rows of outbox.relay_state: small named values the relays share (the
-- dispatcher's cursor, the retention watermark). Their names are defined
-- once, in outbox/names.py.

-- name: relay_state_get
-- One named value; no row when it was never stored.
SELECT value FROM outbox.relay_state WHERE name = %(name)s;
