-- The dispatcher's statements (relay/dispatcher.py, leader only).

-- name: dispatch_batch
-- One statement, hence one transaction on the dispatcher's autocommit
-- session: the cursor move, the delivery rows and the doorbell commit
-- together or not at all (relay/dispatcher.py).
--   moved    compare-and-set of the stored cursor: inserted when absent and
--            %(old)s is NULL, updated only when it still holds %(old)s. A
--            second leader racing us blocks on the row, then sees the new
--            value and moves nothing.
--   created  one row per (active matching webhook, event), in feed order,
--            only if the cursor moved. Patterns: exact, 'prefix.*', '*'.
--            webhook.test is never routed by subscription, and webhook.*
--            events never go to the webhook they are about.
--   rang     NOTIFY %(channel)s (outbox_deliveries; fires at commit) when rows
--            were created.
WITH moved AS (
    INSERT INTO outbox.relay_state AS s (name, value)
    VALUES (%(name)s, %(new)s)
    ON CONFLICT (name) DO UPDATE
        SET value = EXCLUDED.value, updated_at = now()
        WHERE s.value = %(old)s
    RETURNING 1
), batch AS (
    SELECT e.id, e.event_type, e.ord
    FROM unnest(%(ids)s::bigint[], %(types)s::text[]) WITH ORDINALITY AS e (id, event_type, ord)
    WHERE e.event_type <> 'webhook.test'
), created AS (
    INSERT INTO outbox.deliveries (webhook_id, event_id, event_type)
    SELECT w.id, b.id, b.event_type
    FROM batch b
    JOIN outbox.webhooks w
      ON w.is_active
     AND (b.event_type = ANY (w.event_types)
          OR '*' = ANY (w.event_types)
          OR EXISTS (SELECT 1 FROM unnest(w.event_types) AS p (pattern)
                     WHERE right(p.pattern, 2) = '.*'
                       AND starts_with(b.event_type, left(p.pattern, -1))))
    WHERE EXISTS (SELECT 1 FROM moved)
      -- A webhook never receives the webhook.* events about itself: a
      -- failing endpoint subscribed to '*' would otherwise get a new
      -- delivery (webhook.delivery_failed) for every one that fails.
      AND NOT (starts_with(b.event_type, 'webhook.')
               AND EXISTS (SELECT 1 FROM outbox.events e
                           WHERE e.id = b.id AND e.payload ->> 'webhook_id' = w.id::text))
    ORDER BY b.ord, w.id
    ON CONFLICT ON CONSTRAINT deliveries_webhook_event_key DO NOTHING
    RETURNING 1
), rang AS (
    SELECT pg_notify(%(channel)s, '') FROM (SELECT 1 FROM created LIMIT 1) AS any_created
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM created) AS created,
       (SELECT count(*) FROM rang) AS rang;

-- name: dispatcher_session
-- For the leader's session: safe without synchronous commit. The cursor and
-- its delivery rows commit together, so a server crash that loses the last
-- commits rolls both back to an earlier consistent state and the batch is
-- dispatched again. Anything that acts on a delivery row (the sender)
-- commits synchronously, which flushes this WAL first.
SET synchronous_commit = off;
