-- Leader election (relay/leader.py).

-- name: leader_try_lock
-- Session-level: held until this session ends (relay/leader.py).
SELECT pg_try_advisory_lock(%(key)s) AS locked;
