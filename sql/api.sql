-- The REST API's statements (api/webhooks.py, api/events.py, api/endpoint.py).
-- Each block starts with "-- name: NAME" and is a whole statement. Lists are
-- ordered by id so that a row inserted while a client pages through never
-- shifts the pages it has not read yet (new rows get larger ids and land on
-- later pages). Optional filters are parameters that may be NULL
-- ("param IS NULL OR ..."), never SQL glued together.
--
-- The webhook statements return the same columns: every column a client may
-- see. The secrets are deliberately absent, except where a statement's name
-- says "with_secret" (create and rotate-secret show the secret once). The
-- delivery statements likewise return one shape (DeliveryOut).

-- name: webhook_insert
INSERT INTO outbox.webhooks
    (name, url, event_types, secret, payload_format, description, is_active, headers,
     ordering)
VALUES (%(name)s, %(url)s, %(event_types)s, %(secret)s, %(payload_format)s,
        %(description)s, %(is_active)s, %(headers)s, %(ordering)s)
RETURNING id, name, url, event_types, payload_format, is_active, description,
       disabled_reason, created_at, updated_at, last_triggered_at, last_success_at,
       failing_since, success_count, failure_count, previous_secret_expires_at,
       seed_signature, headers, ordering,
          secret

-- name: webhook_get
SELECT id, name, url, event_types, payload_format, is_active, description,
       disabled_reason, created_at, updated_at, last_triggered_at, last_success_at,
       failing_since, success_count, failure_count, previous_secret_expires_at,
       seed_signature, headers, ordering
FROM outbox.webhooks
WHERE id = %(id)s

-- name: webhook_get_with_secret
SELECT id, name, url, event_types, payload_format, is_active, description,
       disabled_reason, created_at, updated_at, last_triggered_at, last_success_at,
       failing_since, success_count, failure_count, previous_secret_expires_at,
       seed_signature, headers, ordering,
       secret
FROM outbox.webhooks
WHERE id = %(id)s

-- name: webhook_list
-- event_type: an exact name finds the webhooks that would receive it (exact,
-- "prefix.*" and "*" subscriptions); a pattern finds that pattern itself.
-- The same filter as webhook_count.
SELECT id, name, url, event_types, payload_format, is_active, description,
       disabled_reason, created_at, updated_at, last_triggered_at, last_success_at,
       failing_since, success_count, failure_count, previous_secret_expires_at,
       seed_signature, headers, ordering
FROM outbox.webhooks
WHERE (%(is_active)s::boolean IS NULL OR is_active = %(is_active)s::boolean)
  AND (%(event_type)s::text IS NULL OR EXISTS (
      SELECT 1 FROM unnest(event_types) AS p
      WHERE p = %(event_type)s::text
         OR p = '*'
         OR (%(exact)s::boolean AND right(p, 2) = '.*'
             AND starts_with(%(event_type)s::text, left(p, -1)))))
ORDER BY id
LIMIT %(limit)s OFFSET %(offset)s

-- name: webhook_count
-- The total behind webhook_list's page: the same filter.
SELECT count(*) AS total
FROM outbox.webhooks
WHERE (%(is_active)s::boolean IS NULL OR is_active = %(is_active)s::boolean)
  AND (%(event_type)s::text IS NULL OR EXISTS (
      SELECT 1 FROM unnest(event_types) AS p
      WHERE p = %(event_type)s::text
         OR p = '*'
         OR (%(exact)s::boolean AND right(p, 2) = '.*'
             AND starts_with(%(event_type)s::text, left(p, -1)))))

-- name: webhook_exists
SELECT 1 FROM outbox.webhooks WHERE id = %(id)s

-- name: webhook_is_active
SELECT is_active FROM outbox.webhooks WHERE id = %(id)s

-- name: webhook_delete
-- The foreign keys cascade: the webhook's deliveries and their attempts go
-- with it (documented in docs/api.md).
DELETE FROM outbox.webhooks WHERE id = %(id)s

-- name: webhook_update
-- PATCH: a NULL parameter leaves the column as it is. Setting a secret ends
-- any rotation overlap (the old secret stops signing at once). Re-activating
-- a disabled webhook clears why it was disabled and restarts the failure
-- clock; the dispatcher and sender read these columns on every batch.
UPDATE outbox.webhooks SET
    name = coalesce(%(name)s::text, name),
    url = coalesce(%(url)s::text, url),
    event_types = coalesce(%(event_types)s::text[], event_types),
    secret = coalesce(%(secret)s::text, secret),
    previous_secret = CASE WHEN %(secret)s::text IS NULL THEN previous_secret END,
    previous_secret_expires_at =
        CASE WHEN %(secret)s::text IS NULL THEN previous_secret_expires_at END,
    description = CASE WHEN %(set_description)s::boolean
                       THEN %(description)s::text ELSE description END,
    payload_format = coalesce(%(payload_format)s::text, payload_format),
    headers = coalesce(%(headers)s::jsonb, headers),
    ordering = coalesce(%(ordering)s::text, ordering),
    is_active = coalesce(%(is_active)s::boolean, is_active),
    disabled_reason = CASE WHEN %(is_active)s::boolean THEN NULL ELSE disabled_reason END,
    failing_since = CASE WHEN %(is_active)s::boolean AND NOT is_active
                         THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = %(id)s

-- name: webhook_stats
-- success_rate is computed over finished deliveries (pending ones have not
-- failed yet). The counts cover the retention window.
SELECT
    (SELECT count(*) FROM outbox.webhooks) AS total_webhooks,
    (SELECT count(*) FROM outbox.webhooks WHERE is_active) AS active_webhooks,
    count(*) AS total_deliveries,
    count(*) FILTER (WHERE status = 'success') AS successful_deliveries,
    count(*) FILTER (WHERE status = 'failed') AS failed_deliveries,
    count(*) FILTER (WHERE status = 'pending') AS pending_deliveries
FROM outbox.deliveries

-- name: delivery_page
-- Deliveries with their event's payload (payloads are not copied into
-- deliveries). LEFT JOIN: retention may already have removed the event of a
-- finished delivery; its payload is then null. Uses deliveries_webhook_id_idx
-- (webhook_id, id).
SELECT d.id, d.webhook_id, d.event_id, d.event_type, e.payload,
       d.response_status, d.response_body, d.status, d.error_message,
       d.attempt_number, d.created_at, d.updated_at, d.delivered_at, d.next_retry_at,
       d.replay, e.created_at AS event_created_at,
       coalesce(d.key, e.key) AS key, d.due_at = 'infinity' AS waiting
FROM outbox.deliveries d
LEFT JOIN outbox.events e ON e.id = d.event_id
WHERE d.webhook_id = %(webhook_id)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
ORDER BY d.id
LIMIT %(limit)s OFFSET %(offset)s

-- name: delivery_page_desc
-- delivery_page newest first, the console's default: deliveries_webhook_id_idx
-- is (webhook_id, id DESC). Offsets shift as new deliveries arrive; the
-- console reloads page one instead of paging while live.
SELECT d.id, d.webhook_id, d.event_id, d.event_type, e.payload,
       d.response_status, d.response_body, d.status, d.error_message,
       d.attempt_number, d.created_at, d.updated_at, d.delivered_at, d.next_retry_at,
       d.replay, e.created_at AS event_created_at,
       coalesce(d.key, e.key) AS key, d.due_at = 'infinity' AS waiting
FROM outbox.deliveries d
LEFT JOIN outbox.events e ON e.id = d.event_id
WHERE d.webhook_id = %(webhook_id)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
ORDER BY d.id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: delivery_count
-- The total behind delivery_page's page: the same filter.
SELECT count(*) AS total FROM outbox.deliveries
WHERE webhook_id = %(webhook_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)

-- name: delivery_one
-- One delivery as delivery_page shows it.
SELECT d.id, d.webhook_id, d.event_id, d.event_type, e.payload,
       d.response_status, d.response_body, d.status, d.error_message,
       d.attempt_number, d.created_at, d.updated_at, d.delivered_at, d.next_retry_at,
       d.replay, e.created_at AS event_created_at,
       coalesce(d.key, e.key) AS key, d.due_at = 'infinity' AS waiting
FROM outbox.deliveries d
LEFT JOIN outbox.events e ON e.id = d.event_id
WHERE d.webhook_id = %(webhook_id)s AND d.id = %(id)s

-- name: attempt_list
SELECT a.id, a.delivery_id, a.attempt_number, a.started_at, a.duration_ms,
       a.outcome, a.response_status, a.response_body, a.error_class, a.error_message,
       a.request_headers, a.response_headers
FROM outbox.delivery_attempts a
WHERE a.delivery_id = %(delivery_id)s
ORDER BY a.attempt_number, a.id

-- name: event_types_seen
-- Types among the most recent events, newest id first over the primary key:
-- a bounded scan however long the log is (there is no index on event_type,
-- and adding one would slow every write).
SELECT event_type, max(created_at) AS last_seen_at, count(*) AS recent
FROM (SELECT event_type, created_at FROM outbox.events
      ORDER BY id DESC LIMIT %(window)s) AS recent_events
GROUP BY event_type

-- name: event_types_tracked
SELECT event_type, table_schema, table_name, operation
FROM outbox.capture_rules
ORDER BY event_type, table_schema, table_name, operation

-- name: metrics_deliveries
-- Delivery rows by status, and the queue: pending rows already due (the
-- partial index deliveries_due_idx covers it), and those waiting behind the
-- head of their key (sql/012_key_ordering.sql: deliveries_key_queue_idx).
SELECT
    count(*) FILTER (WHERE status = 'pending') AS pending,
    count(*) FILTER (WHERE status = 'success') AS success,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    (SELECT count(*) FROM outbox.deliveries
     WHERE status = 'pending' AND due_at <= now()) AS due,
    (SELECT count(*) FROM outbox.deliveries
     WHERE status = 'pending' AND key IS NOT NULL AND due_at = 'infinity') AS waiting
FROM outbox.deliveries

-- name: token_any_live
SELECT EXISTS (SELECT 1 FROM outbox.api_tokens WHERE revoked_at IS NULL) AS live

-- name: token_touch
-- At most one write a minute per token, however busy the token is.
UPDATE outbox.api_tokens SET last_used_at = now()
WHERE id = %(id)s AND revoked_at IS NULL
  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')

-- name: events_emitted_desc
-- The newest events a cursor has emitted (GET /events?order=desc), newest
-- first: id <= after, minus the transactions the cursor saw in progress
-- (pending xids, or at/above its xmax) — exactly the complement of what
-- /ws?since=CURSOR sends, so history read here and the live feed meet with
-- no gap and no repeat. A backward primary-key scan.
SELECT e.id, e.event_type AS type, e.payload, e.created_at, e.key, e.traceparent
FROM outbox.events e
WHERE e.id <= %(after)s
  AND NOT (e.xid = ANY (%(pending)s::text[]::xid8[]) OR e.xid >= %(xmax)s::text::xid8)
ORDER BY e.id DESC
LIMIT %(limit)s

-- name: event_exists
SELECT 1 FROM outbox.events WHERE id = %(id)s

-- name: event_deliveries
-- Every delivery of one event, to every webhook (replays included), with the
-- webhook's name; deliveries_webhook_event_key leads with event_id.
SELECT d.id, d.webhook_id, w.name AS webhook_name, d.event_id, d.event_type, e.payload,
       d.response_status, d.response_body, d.status, d.error_message,
       d.attempt_number, d.created_at, d.updated_at, d.delivered_at, d.next_retry_at,
       d.replay, e.created_at AS event_created_at,
       coalesce(d.key, e.key) AS key, d.due_at = 'infinity' AS waiting
FROM outbox.deliveries d
JOIN outbox.webhooks w ON w.id = d.webhook_id
LEFT JOIN outbox.events e ON e.id = d.event_id
WHERE d.event_id = %(id)s
ORDER BY d.webhook_id, d.replay

-- name: replay_range
-- The events of a replay range that the webhook subscribes to now, and the
-- replay number each new delivery gets (one more than the highest so far
-- for that event and webhook; 0 when the event has none yet, e.g. it came
-- before the webhook existed). The range: since/until as cursors (the
-- events a cursor has not emitted / has emitted, as /ws and /events read
-- them) or as times (created_at >= since, < until); NULL bounds are open.
-- Routing as the dispatcher's (sql/dispatch.sql dispatch_batch): no
-- webhook.test, no webhook.* event about this webhook itself.
WITH w AS (
    SELECT id, event_types, ordering FROM outbox.webhooks WHERE id = %(webhook_id)s
), picked AS (
    SELECT e.id, e.event_type, CASE WHEN w.ordering = 'key' THEN e.key END AS key
    FROM outbox.events e, w
    WHERE (%(since_after)s::bigint IS NULL
           OR e.id > %(since_after)s::bigint
           OR e.xid = ANY (%(since_pending)s::text[]::xid8[])
           OR e.xid >= %(since_xmax)s::text::xid8)
      AND (%(until_after)s::bigint IS NULL
           OR (e.id <= %(until_after)s::bigint
               AND NOT (e.xid = ANY (%(until_pending)s::text[]::xid8[])
                        OR e.xid >= %(until_xmax)s::text::xid8)))
      AND (%(since_time)s::timestamptz IS NULL OR e.created_at >= %(since_time)s::timestamptz)
      AND (%(until_time)s::timestamptz IS NULL OR e.created_at < %(until_time)s::timestamptz)
      AND e.event_type <> 'webhook.test'
      AND (e.event_type = ANY (w.event_types)
           OR '*' = ANY (w.event_types)
           OR EXISTS (SELECT 1 FROM unnest(w.event_types) AS p (pattern)
                      WHERE right(p.pattern, 2) = '.*'
                        AND starts_with(e.event_type, left(p.pattern, -1))))
      AND NOT (starts_with(e.event_type, 'webhook.')
               AND e.payload ->> 'webhook_id' = w.id::text)
    ORDER BY e.id
    LIMIT %(cap)s
)
SELECT p.id, p.event_type,
       coalesce((SELECT max(d.replay) + 1 FROM outbox.deliveries d
                 WHERE d.event_id = p.id AND d.webhook_id = %(webhook_id)s), 0) AS replay,
       p.key
FROM picked p
ORDER BY p.id

-- name: replay_insert
-- The new deliveries of a replay, due now, in event order. ON CONFLICT: a
-- concurrent replay (or the dispatcher, for replay 0) got there first.
-- Keyed ones (webhook ordered by key) join the back of their key's queue,
-- waiting; the caller holds the webhook lock and promotes (sql/012).
INSERT INTO outbox.deliveries (webhook_id, event_id, event_type, replay, key, due_at)
SELECT %(webhook_id)s, r.event_id, r.event_type, r.replay, r.key,
       CASE WHEN r.key IS NULL THEN now() ELSE 'infinity' END
FROM unnest(%(event_ids)s::bigint[], %(event_types)s::text[], %(replays)s::int[],
            %(keys)s::text[])
     WITH ORDINALITY AS r (event_id, event_type, replay, key, ord)
ORDER BY r.ord
ON CONFLICT ON CONSTRAINT deliveries_webhook_event_key DO NOTHING
RETURNING key

-- name: webhook_set_seed_signature
UPDATE outbox.webhooks SET seed_signature = %(seed_signature)s WHERE id = %(id)s

-- name: blocked_keys_summary
-- Per-key order, the operator's view of one webhook (GET
-- /webhooks/{id}/blocked-keys): its key queues (keys with a pending
-- delivery), what waits in them, and the keys blocked behind a failing head
-- (a pending head with attempts has failed every one so far). One pass over
-- deliveries_key_queue_idx for the webhook, one over its heads.
WITH q AS (
    SELECT key, count(*) AS pending FROM outbox.deliveries
    WHERE webhook_id = %(webhook_id)s AND status = 'pending' AND key IS NOT NULL
    GROUP BY key
), h AS (
    SELECT key, attempt_number FROM outbox.deliveries
    WHERE webhook_id = %(webhook_id)s AND status = 'pending' AND key IS NOT NULL
      AND due_at < 'infinity'
)
SELECT count(*) AS queues,
       coalesce(sum(q.pending) - count(h.key), 0) AS waiting,
       count(*) FILTER (WHERE h.attempt_number > 0) AS blocked_keys,
       coalesce(sum(q.pending - 1) FILTER (WHERE h.attempt_number > 0), 0) AS blocked_waiting
FROM q LEFT JOIN h USING (key)

-- name: blocked_keys_page
-- The failing heads, oldest first, each with how many deliveries wait
-- behind it (an index-only count over its queue).
SELECT h.key, h.id AS delivery_id, h.event_id, h.event_type, h.attempt_number,
       h.created_at, h.next_retry_at, h.response_status, h.error_message,
       (SELECT count(*) FROM outbox.deliveries q
        WHERE q.webhook_id = h.webhook_id AND q.key = h.key AND q.status = 'pending'
          AND q.key IS NOT NULL) - 1 AS waiting
FROM outbox.deliveries h
WHERE h.webhook_id = %(webhook_id)s AND h.status = 'pending' AND h.key IS NOT NULL
  AND h.due_at < 'infinity' AND h.attempt_number > 0
ORDER BY h.id
LIMIT %(limit)s OFFSET %(offset)s
