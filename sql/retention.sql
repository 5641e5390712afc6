-- Retention's statements (relay/retention.py, leader only): bounded
-- batches, each its own short transaction.

-- name: retention_deliveries
-- Finished deliveries older than the retention, oldest first, one bounded
-- batch (deliveries_finished_created_idx); attempts go by ON DELETE CASCADE.
WITH doomed AS (
    SELECT id FROM outbox.deliveries
    WHERE status <> 'pending' AND created_at < now() - %(keep)s::interval
    ORDER BY created_at
    LIMIT %(limit)s
)
DELETE FROM outbox.deliveries d USING doomed WHERE d.id = doomed.id;

-- name: retention_events
-- One bounded batch of old events (relay/retention.py): walk the next
-- %(limit)s ids after %(from)s, up to the dispatcher's stored cursor (its
-- after, xmax and pending), and delete those older than the retention that
-- the dispatcher has handled (not written by a transaction its cursor still
-- waits for) and that no pending delivery needs (deliveries_pending_event_idx).
-- The largest id deleted raises the retention watermark (the relay_state row
-- %(watermark)s) in the same transaction. Returns rows scanned, last id
-- scanned, rows deleted, the new watermark (NULL when unchanged) and whether
-- the walk reached an event too young to delete.
WITH scan AS MATERIALIZED (
    SELECT id, xid, created_at
    FROM outbox.events
    WHERE id > %(from)s AND id <= %(after)s
    ORDER BY id
    LIMIT %(limit)s
), doomed AS (
    SELECT s.id FROM scan s
    WHERE s.created_at < now() - %(keep)s::interval
      AND NOT (s.xid = ANY (%(pending)s::text[]::xid8[]) OR s.xid >= %(xmax)s::text::xid8)
      AND NOT EXISTS (SELECT 1 FROM outbox.deliveries d
                      WHERE d.event_id = s.id AND d.status = 'pending')
), gone AS (
    DELETE FROM outbox.events e USING doomed WHERE e.id = doomed.id
    RETURNING e.id
), mark AS (
    INSERT INTO outbox.relay_state AS s (name, value)
    SELECT %(watermark)s, max(id)::text FROM gone HAVING count(*) > 0
    ON CONFLICT (name) DO UPDATE
        SET value = greatest(s.value::bigint, EXCLUDED.value::bigint)::text, updated_at = now()
    RETURNING value
)
SELECT (SELECT count(*) FROM scan) AS scanned,
       (SELECT max(id) FROM scan) AS last_id,
       (SELECT count(*) FROM gone) AS deleted,
       (SELECT value FROM mark) AS watermark,
       coalesce((SELECT bool_or(created_at >= now() - %(keep)s::interval) FROM scan), false)
           AS reached_recent;
