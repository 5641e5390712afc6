-- Named queries of the REST API (api/webhooks.py, api/events.py).
-- Each block starts with "-- name: NAME". Lists are ordered by id so that a
-- row inserted while a client pages through never shifts the pages it has
-- not read yet (new rows get larger ids and land on later pages).
-- Blocks named *_columns or *_where are fragments (a column list, a WHERE
-- clause) that api/*.py joins into whole statements.

-- name: webhook_columns
-- Every column a client may see. The secrets are deliberately absent.
id, name, url, event_types, payload_format, is_active, description,
disabled_reason, created_at, updated_at, last_triggered_at, last_success_at,
failing_since, success_count, failure_count, previous_secret_expires_at

-- name: webhook_where
-- event_type: an exact name finds the webhooks that would receive it (exact,
-- "prefix.*" and "*" subscriptions); a pattern finds that pattern itself.
(%(is_active)s::boolean IS NULL OR is_active = %(is_active)s::boolean)
AND (%(event_type)s::text IS NULL OR EXISTS (
    SELECT 1 FROM unnest(event_types) AS p
    WHERE p = %(event_type)s::text
       OR p = '*'
       OR (%(exact)s::boolean AND right(p, 2) = '.*'
           AND starts_with(%(event_type)s::text, left(p, -1)))))

-- name: webhook_count
SELECT count(*) FROM outbox.webhooks WHERE

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

-- name: delivery_select
-- Deliveries with their event's payload (payloads are not copied into
-- deliveries). LEFT JOIN: retention may already have removed the event of a
-- finished delivery; its payload is then null.
SELECT d.id, d.webhook_id, d.event_id, d.event_type, e.payload,
       d.response_status, d.response_body, d.status, d.error_message,
       d.attempt_number, d.created_at, d.updated_at, d.delivered_at, d.next_retry_at
FROM outbox.deliveries d
LEFT JOIN outbox.events e ON e.id = d.event_id

-- name: delivery_page_where
-- Uses deliveries_webhook_id_idx (webhook_id, id).
WHERE d.webhook_id = %(webhook_id)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
ORDER BY d.id
LIMIT %(limit)s OFFSET %(offset)s

-- name: delivery_count
SELECT count(*) FROM outbox.deliveries
WHERE webhook_id = %(webhook_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)

-- name: delivery_one_where
WHERE d.webhook_id = %(webhook_id)s AND d.id = %(id)s

-- name: attempt_list
SELECT a.id, a.delivery_id, a.attempt_number, a.started_at, a.duration_ms,
       a.outcome, a.response_status, a.response_body, a.error_class, a.error_message
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
-- partial index deliveries_due_idx covers it).
SELECT
    count(*) FILTER (WHERE status = 'pending') AS pending,
    count(*) FILTER (WHERE status = 'success') AS success,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    (SELECT count(*) FROM outbox.deliveries
     WHERE status = 'pending' AND due_at <= now()) AS due
FROM outbox.deliveries

-- name: token_any_live
SELECT EXISTS (SELECT 1 FROM outbox.api_tokens WHERE revoked_at IS NULL)

-- name: token_touch
-- At most one write a minute per token, however busy the token is.
UPDATE outbox.api_tokens SET last_used_at = now()
WHERE id = %(id)s AND revoked_at IS NULL
  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
