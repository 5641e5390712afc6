-- The listener's statements (relay/listener.py), on its own autocommit
-- session (LISTEN is per session, and a pooled connection could be reset).

-- name: listen
-- A template: {channel} is composed with psycopg.sql.Identifier (LISTEN takes
-- no parameters). The channels are outbox.names.CHANNELS.
LISTEN {channel};

-- name: ping
-- Proves an otherwise silent connection is alive (with TCP keepalives, this
-- catches a connection that hangs without closing).
SELECT 1;
