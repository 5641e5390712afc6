-- The delivery worker's statements (relay/delivery/store.py): one claim, and
-- one flush transaction of a few statements per batch of attempts. Arrays
-- passed as parameters are columns of a batch, unnested into rows, so the
-- round trips do not grow with the batch. The flush's columns are sent in
-- binary ("b" placeholders): psycopg's text format quotes and escapes every element
-- in Python, and the attempts' JSON header columns made that ~20x the cost
-- of the binary dump (BENCHMARKS.md, B4).

-- name: delivery_claim
-- Claim due deliveries of active webhooks: FOR UPDATE OF d SKIP LOCKED lets
-- any number of workers claim at once without waiting for or doubling each
-- other (webhook rows are read, not locked). The claim moves due_at to the
-- end of the lease, so a crashed worker's deliveries become due again; the
-- new due_at is also the claim's fencing token (see delivery_record).
-- Webhooks whose endpoint this worker already has enough of are skipped.
-- A delivery whose event is gone (LEFT JOIN) comes back with a NULL payload.
-- Deliveries waiting behind the head of their key's queue have due_at
-- 'infinity' (sql/012_key_ordering.sql): due_at <= now() never reaches them.
WITH due AS (
    SELECT d.id
    FROM outbox.deliveries d
    JOIN outbox.webhooks w ON w.id = d.webhook_id
    WHERE d.status = 'pending' AND d.due_at <= now() AND w.is_active
      AND d.webhook_id <> ALL(%(skip)s::bigint[])
    ORDER BY d.due_at
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    -- By primary key (= ANY of the locked ids): a join with "due" let the
    -- planner hash it against a sequential scan of the whole table, O(table)
    -- per claim on a table of a few thousand rows (BENCHMARKS.md, B4 session 4).
    UPDATE outbox.deliveries d
    SET due_at = now() + %(lease)s, locked_by = %(worker)s
    WHERE d.id = ANY (ARRAY(SELECT due.id FROM due))
    RETURNING d.id, d.webhook_id, d.event_id, d.event_type, d.attempt_number, d.due_at
)
SELECT c.id, c.webhook_id, c.event_id, c.event_type,
       c.attempt_number + 1 AS attempt, c.due_at AS lease,
       e.payload, e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END
           AS previous_secret,
       w.payload_format,
       -- X-Webhook-Signature during a rotation: the previous secret while it
       -- is valid when the operator chose seed_signature 'old' (sql/004).
       CASE WHEN w.previous_secret_expires_at > now() AND w.seed_signature = 'old'
            THEN w.previous_secret ELSE w.secret END AS seed_secret,
       e.key, e.traceparent, e.tracestate,
       w.headers  -- the webhook's custom request headers (sql/007)
FROM claimed c
JOIN outbox.webhooks w ON w.id = c.webhook_id
LEFT JOIN outbox.events e ON e.id = c.event_id;

-- name: delivery_insert_attempts
-- Every attempt, one row each, many per round trip, their ids in the
-- batch's order (ORDER BY ord: a join's order is the planner's choice, and
-- two attempts of one delivery may share a batch). A delivery deleted
-- meanwhile (its webhook was deleted) has no row to refer to any more.
-- "d.id = ANY" makes the existence check a primary-key probe of the batch's
-- ids: as a plain semi-join the planner chose a sequential scan of the whole
-- table per flush (B4 session 4).
INSERT INTO outbox.delivery_attempts
    (delivery_id, attempt_number, started_at, duration_ms, outcome,
     response_status, response_body, error_class, error_message,
     request_headers, response_headers)
SELECT r.delivery_id, r.attempt_number, to_timestamp(r.started_at), r.duration_ms, r.outcome,
       r.response_status, r.response_body, r.error_class, r.error_message,
       r.request_headers::jsonb, r.response_headers::jsonb
FROM unnest(%(delivery_id)b::bigint[], %(attempt_number)b::int[], %(started_at)b::float8[],
            %(duration_ms)b::float8[], %(outcome)b::text[], %(response_status)b::int[],
            %(response_body)b::text[], %(error_class)b::text[], %(error_message)b::text[],
            %(request_headers)b::text[], %(response_headers)b::text[]) WITH ORDINALITY
     AS r(delivery_id, attempt_number, started_at, duration_ms, outcome,
          response_status, response_body, error_class, error_message,
          request_headers, response_headers, ord)
WHERE EXISTS (SELECT 1 FROM outbox.deliveries d
              WHERE d.id = r.delivery_id AND d.id = ANY (%(delivery_id)b::bigint[]))
ORDER BY r.ord;

-- name: delivery_record
-- The delivery rows after their latest attempt, fenced by the lease: a row
-- whose due_at is no longer our claim's was re-claimed after our lease ran
-- out (or re-queued by an operator) and is not ours to write. "hold" keeps
-- the claim (another attempt follows in memory); "delay" is the wait before
-- the next attempt (NULL: none follows). (An added "d.id = ANY (ids)", as
-- in the statements around it, made this one slower in B4: 45-57 against
-- 28-31 us per delivery in pg_stat_statements; BENCHMARKS.md, session 4.)
UPDATE outbox.deliveries d
SET status = r.status,
    attempt_number = greatest(d.attempt_number, r.attempt_number),
    due_at = CASE WHEN r.hold THEN d.due_at
                  ELSE now() + make_interval(secs => coalesce(r.delay, 0)) END,
    next_retry_at = now() + make_interval(secs => r.delay),
    locked_by = CASE WHEN r.hold THEN d.locked_by END,
    response_status = r.response_status,
    response_body = r.response_body,
    error_message = r.error_message,
    delivered_at = CASE WHEN r.status = 'success' THEN now() END,
    updated_at = now()
FROM unnest(%(id)b::bigint[], %(lease)b::timestamptz[], %(status)b::text[],
            %(attempt_number)b::int[], %(delay)b::float8[], %(hold)b::bool[],
            %(response_status)b::int[], %(response_body)b::text[], %(error_message)b::text[])
     AS r(id, lease, status, attempt_number, delay, hold, response_status, response_body,
          error_message)
WHERE d.id = r.id AND d.due_at = r.lease AND d.status = 'pending'
RETURNING d.id, d.status, d.webhook_id, d.key;

-- name: delivery_release
-- Give claimed deliveries back unattempted (shutdown, or more than this
-- worker takes for one endpoint), due after "delay" seconds.
UPDATE outbox.deliveries d
SET due_at = now() + make_interval(secs => r.delay), locked_by = NULL, updated_at = now()
FROM unnest(%(id)b::bigint[], %(lease)b::timestamptz[], %(delay)b::float8[]) AS r(id, lease, delay)
WHERE d.id = r.id AND d.due_at = r.lease AND d.status = 'pending';

-- name: delivery_webhook_stats
-- Counters and the continuous-failure clock, one row per webhook per flush.
-- Rows are locked in id order first (FOR NO KEY UPDATE: it does not block
-- the dispatcher's foreign-key checks) so that concurrent flushes touching
-- the same webhooks cannot deadlock. The lock is also the one per-key order
-- needs before delivery_promote (a later statement of the flush): every
-- webhook of a delivery this flush finished is among these rows. failing_since: the first failure after
-- the latest success; a success clears it unless a newer failure is known.
WITH r AS (
    SELECT * FROM unnest(%(webhook_id)b::bigint[], %(ok)b::int[], %(failed)b::int[],
                         %(last_at)b::float8[], %(last_ok_at)b::float8[],
                         %(first_fail_at)b::float8[], %(fail_after_ok)b::float8[])
        AS r(webhook_id, ok, failed, last_at, last_ok_at, first_fail_at, fail_after_ok)
), locked AS (
    SELECT w.id FROM outbox.webhooks w JOIN r ON r.webhook_id = w.id
    ORDER BY w.id FOR NO KEY UPDATE OF w
)
UPDATE outbox.webhooks w
SET success_count = w.success_count + r.ok,
    failure_count = w.failure_count + r.failed,
    last_triggered_at = greatest(w.last_triggered_at, to_timestamp(r.last_at)),
    last_success_at = greatest(w.last_success_at, to_timestamp(r.last_ok_at)),
    failing_since = CASE
        WHEN r.last_ok_at IS NULL THEN coalesce(w.failing_since, to_timestamp(r.first_fail_at))
        WHEN w.failing_since > to_timestamp(r.last_ok_at) THEN w.failing_since
        ELSE to_timestamp(r.fail_after_ok) END
FROM r
WHERE w.id = r.webhook_id AND w.id IN (SELECT id FROM locked);

-- name: delivery_disable_webhooks
-- Disable endpoints that answered 410 Gone, or that have failed without a
-- single success for OUTBOX_DISABLE_AFTER, and publish webhook.disabled for
-- each in the same transaction. Only rows still active change, so each
-- endpoint is disabled (and announced) once.
WITH disabled AS (
    UPDATE outbox.webhooks w
    SET is_active = false, updated_at = now(),
        disabled_reason = CASE
            WHEN w.id = ANY(%(gone)s::bigint[]) THEN 'the endpoint answered 410 Gone'
            ELSE 'no successful delivery since ' || w.failing_since::text
                 || ' (OUTBOX_DISABLE_AFTER ' || %(disable_after)s::interval::text || ')' END
    WHERE w.id = ANY(%(ids)s::bigint[]) AND w.is_active
      AND (w.id = ANY(%(gone)s::bigint[]) OR w.failing_since <= now() - %(disable_after)s::interval)
    RETURNING w.id, w.name, w.url, w.disabled_reason, w.failing_since
)
SELECT outbox.publish('webhook.disabled', jsonb_build_object(
           'webhook_id', id, 'name', name, 'url', url, 'reason', disabled_reason,
           'failing_since', failing_since)) AS event_id
FROM disabled ORDER BY id;

-- name: delivery_publish_failed
-- webhook.delivery_failed for deliveries this flush moved to failed (and
-- for the ones an operator skipped, relay/delivery/ops.py). key: the key of an
-- ordered delivery; then "skipped" is true: its queue moves on to the next
-- event, and event_id is the one the receiver will not get in that order.
SELECT outbox.publish('webhook.delivery_failed', jsonb_build_object(
           'delivery_id', d.id, 'webhook_id', d.webhook_id, 'event_id', d.event_id,
           'event_type', d.event_type, 'attempts', d.attempt_number,
           'response_status', d.response_status, 'error_message', d.error_message,
           'key', d.key, 'skipped', d.key IS NOT NULL))
FROM outbox.deliveries d
WHERE d.id = ANY(%(ids)s::bigint[])
ORDER BY d.id;

-- name: delivery_promote
-- Per-key order (sql/012_key_ordering.sql): each listed (webhook, key)
-- queue that has no head gets one, its oldest waiting delivery, due now.
-- The caller holds the webhook rows' lock, taken in an EARLIER statement of
-- its transaction: this statement's snapshot then holds everything the
-- previous holders committed (their new waiting rows, their promotions).
-- One probe of deliveries_key_head_key and one of deliveries_key_queue_idx
-- per queue, however long the queue is. Returns the promoted deliveries.
WITH queues AS (
    SELECT DISTINCT q.webhook_id, q.key
    FROM unnest(%(webhook_id)s::bigint[], %(key)s::text[]) AS q (webhook_id, key)
    WHERE q.key IS NOT NULL
), next AS (
    SELECT (SELECT d.id FROM outbox.deliveries d
            WHERE d.webhook_id = q.webhook_id AND d.key = q.key
              AND d.status = 'pending' AND d.key IS NOT NULL
            ORDER BY d.id LIMIT 1) AS id
    FROM queues q
    WHERE NOT EXISTS (SELECT 1 FROM outbox.deliveries h
                      WHERE h.webhook_id = q.webhook_id AND h.key = q.key
                        AND h.status = 'pending' AND h.key IS NOT NULL
                        AND h.due_at < 'infinity')
)
UPDATE outbox.deliveries d
SET due_at = now(), updated_at = now()
FROM next
WHERE d.id = next.id AND d.due_at = 'infinity'
RETURNING d.id, d.webhook_id, d.key;

-- name: delivery_lock_webhooks
-- The per-key order lock for the operator's actions and replays (see
-- delivery_promote): webhook rows, in id order as every holder takes them.
SELECT id FROM outbox.webhooks WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR NO KEY UPDATE;

-- name: delivery_pending_count
-- For the pending-deliveries gauge (index-only on deliveries_due_idx).
SELECT count(*) AS pending FROM outbox.deliveries WHERE status = 'pending';
