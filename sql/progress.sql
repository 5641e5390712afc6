-- Progress and id checks (relay/progress.py, api/health.py, cli/repair.py).

-- name: event_id_high
-- The largest event id the sequence has handed out (0 if none yet).
SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
FROM outbox.events_id_seq;

-- name: dispatcher_state_age
-- The stored dispatcher cursor and how long ago it last moved.
SELECT value, extract(epoch FROM now() - updated_at)::float8 AS age
FROM outbox.relay_state WHERE name = %(name)s;

-- name: ids_used
-- The largest event id known to have been handed out: the dispatcher's
-- cursor (passed in), the retention watermark, the delivery rows.
SELECT greatest(
    %(after)s::bigint,
    (SELECT value::bigint FROM outbox.relay_state WHERE name = %(watermark)s),
    (SELECT max(event_id) FROM outbox.deliveries),
    0
);

-- name: repair_lock
-- No event is written while the sequence is repaired.
LOCK TABLE outbox.events IN SHARE ROW EXCLUSIVE MODE;

-- name: repair_setval
SELECT setval('outbox.events_id_seq', %(floor)s, true);

-- name: repair_renumber
-- Events at or below the floor that the dispatcher has not seen yet (their
-- transactions were in progress or later as far as its cursor knows): after
-- a reset these carry ids that were used before. They get fresh ids above
-- the floor, in their id order, so one transaction's events stay together.
WITH todo AS (
    SELECT id FROM outbox.events
    WHERE id <= %(floor)s
      AND (id > %(after)s
           OR xid = ANY (%(pending)s::text[]::xid8[])
           OR xid >= %(xmax)s::text::xid8)
    ORDER BY id
), fresh AS (
    SELECT id, nextval('outbox.events_id_seq') AS new_id FROM todo
)
UPDATE outbox.events e SET id = fresh.new_id
FROM fresh WHERE e.id = fresh.id
RETURNING fresh.id AS old_id, fresh.new_id;
