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

-- name: api_session
-- For each connection of the API's pool (relay/service.py): the same
-- "jit off" as above. The /ws catch-up and /events replay run the feed
-- statement on these; PostgreSQL planned a read inside a large transaction
-- at a cost above jit_above_cost and spent ~0.9 s compiling it for ~2 ms of
-- work, every page of a resuming client (200,000 late events took 208 s to
-- reach one; BENCHMARKS.md, session 5).
SELECT set_config('jit', 'off', false);
