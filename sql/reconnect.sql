-- Statements every dedicated relay connection runs (relay/reconnect.py).

-- name: relay_session
-- The same keepalives on the server side as on the client's, for this
-- session: the server then drops a lost leader's session, and with it the
-- leader's advisory lock, within seconds instead of the operating system's
-- two hours. Ignored on Unix-domain sockets, where there is no network to
-- lose. set_config(..., false): for the session, not the transaction.
-- jit off: every relay statement is a short, indexed one, but some (the
-- dispatcher's batch insert, with its pattern subqueries over unnested
-- arrays) have plan costs above jit_above_cost, and PostgreSQL then spent
-- ~0.5 s compiling each of them for ~10 ms of work (BENCHMARKS.md, B4).
SELECT set_config('tcp_keepalives_idle', %(idle)s, false),
       set_config('tcp_keepalives_interval', %(interval)s, false),
       set_config('tcp_keepalives_count', %(count)s, false),
       set_config('jit', 'off', false);
