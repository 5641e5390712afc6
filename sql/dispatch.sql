-- The dispatcher's statements (relay/dispatcher.py, leader only).

-- name: dispatch_batch
-- The batch's one transaction (relay/dispatcher.py): the cursor move, the
-- delivery rows, the doorbell and (when the batch made keyed deliveries to
-- ordered webhooks) the promotion of their queues commit together or not at
-- all. Without keyed events it runs alone, in autocommit (no promotion can
-- follow); with them it is the first statement of a transaction.
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
--   ordered  per-key order (sql/012_key_ordering.sql): a keyed event's
--            delivery to a webhook with ordering 'key' carries the key and
--            is inserted waiting (due_at 'infinity'); the webhook rows of such
--            deliveries are locked here, and the dispatcher then promotes
--            the queues that have no head (delivery_promote, the next
--            statement of the same transaction: it must read the queues
--            after this lock, not with this statement's snapshot).
WITH moved AS (
    INSERT INTO outbox.relay_state AS s (name, value)
    VALUES (%(name)s, %(new)s)
    ON CONFLICT (name) DO UPDATE
        SET value = EXCLUDED.value, updated_at = now()
        WHERE s.value = %(old)s
    RETURNING 1
), batch AS (
    SELECT e.id, e.event_type, e.key, e.ord
    FROM unnest(%(ids)b::bigint[], %(types)b::text[], %(keys)b::text[])
        WITH ORDINALITY AS e (id, event_type, key, ord)
    WHERE e.event_type <> 'webhook.test'
), created AS (
    INSERT INTO outbox.deliveries (webhook_id, event_id, event_type, key, due_at)
    SELECT w.id, b.id, b.event_type, o.key,
           CASE WHEN o.key IS NULL THEN now() ELSE 'infinity' END
    FROM batch b
    JOIN outbox.webhooks w
      ON w.is_active
     AND (b.event_type = ANY (w.event_types)
          OR '*' = ANY (w.event_types)
          OR EXISTS (SELECT 1 FROM unnest(w.event_types) AS p (pattern)
                     WHERE right(p.pattern, 2) = '.*'
                       AND starts_with(b.event_type, left(p.pattern, -1))))
    CROSS JOIN LATERAL (SELECT CASE WHEN w.ordering = 'key' THEN b.key END AS key) AS o
    WHERE EXISTS (SELECT 1 FROM moved)
      -- A webhook never receives the webhook.* events about itself: a
      -- failing endpoint subscribed to '*' would otherwise get a new
      -- delivery (webhook.delivery_failed) for every one that fails.
      AND NOT (starts_with(b.event_type, 'webhook.')
               AND EXISTS (SELECT 1 FROM outbox.events e
                           WHERE e.id = b.id AND e.payload ->> 'webhook_id' = w.id::text))
    ORDER BY b.ord, w.id
    ON CONFLICT ON CONSTRAINT deliveries_webhook_event_key DO NOTHING
    RETURNING webhook_id, key
), queues AS (
    SELECT DISTINCT webhook_id, key FROM created WHERE key IS NOT NULL
), ordered AS (
    -- In id order, as every other holder of these locks takes them.
    SELECT w.id FROM outbox.webhooks w
    WHERE w.id IN (SELECT webhook_id FROM queues)
    ORDER BY w.id
    FOR NO KEY UPDATE OF w
), rang AS (
    SELECT pg_notify(%(channel)s, '') FROM (SELECT 1 FROM created LIMIT 1) AS any_created
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM created) AS created,
       (SELECT count(*) FROM rang) AS rang,
       (SELECT count(*) FROM ordered) AS ordered,
       coalesce((SELECT array_agg(webhook_id ORDER BY webhook_id, key) FROM queues), '{}')
           AS queue_webhooks,
       coalesce((SELECT array_agg(key ORDER BY webhook_id, key) FROM queues), '{}')
           AS queue_keys;

-- name: dispatcher_session
-- For the leader's session: safe without synchronous commit. The cursor and
-- its delivery rows commit together, so a server crash that loses the last
-- commits rolls both back to an earlier consistent state and the batch is
-- dispatched again. Anything that acts on a delivery row (the sender)
-- commits synchronously, which flushes this WAL first.
SET synchronous_commit = off;
