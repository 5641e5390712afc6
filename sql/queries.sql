-- Named queries used by the relay. Each block starts with "-- name: NAME".

-- name: feed_read
-- The whole feed read (relay/feed.py) as ONE statement: one round trip, and
-- one snapshot for every part of it (in READ COMMITTED a statement runs on a
-- single snapshot, which pg_current_snapshot() reports). Rows come back
-- tagged by kind (xids as bigint: an xid8 is epoch << 32 | xid):
--   's'  the snapshot, 'xmin:xmax:xip,...' (in the event_type column);
--   'p'  the page: visible rows above the cursor, by id (primary-key scan);
--   'l'  late rows: at or below the cursor, written by transactions the
--        previous read saw as in progress (pending xids, or xid >= its xmax:
--        xmax is latestCompletedXid + 1, so a running transaction can already
--        hold an xid at or above it) that have committed since;
--   'c'  transactions of a full page, or late ones, with rows past the page:
--        the reader cuts the page so that each transaction comes out whole.
-- The xid lookups use events_xid_id_idx (sql/002): both conditions are index
-- conditions, and "rows past the page" is one probe per transaction however
-- large the transaction.
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot()::text AS s
), page AS MATERIALIZED (
    SELECT id, xid, event_type, payload, created_at, key, traceparent, tracestate
    FROM outbox.events
    WHERE id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
), late AS MATERIALIZED (
    SELECT id, xid, event_type, payload, created_at, key, traceparent, tracestate
    FROM outbox.events
    WHERE (xid = ANY (%(pending)s::text[]::xid8[]) OR xid >= %(xmax)s::text::xid8)
      AND id <= %(after)s
), page_end AS (
    SELECT count(*) AS n, max(id) AS max_id FROM page
), continuing AS (
    -- "The transaction's largest id" is one backward probe of the (xid, id)
    -- index whatever the statistics say; an EXISTS (... id > page end) may be
    -- planned as a join or a scan over every row past the page.
    SELECT t.xid
    FROM page_end, (SELECT xid FROM page UNION SELECT xid FROM late) AS t
    WHERE page_end.n >= %(limit)s
      AND (SELECT max(e.id) FROM outbox.events e WHERE e.xid = t.xid) > page_end.max_id
)
SELECT 's', NULL::bigint, NULL::bigint, s, NULL::text, NULL::timestamptz,
       NULL::text, NULL::text, NULL::text FROM snap
UNION ALL
SELECT 'p', id, xid::text::bigint, event_type, payload::text, created_at,
       key, traceparent, tracestate FROM page
UNION ALL
SELECT 'l', id, xid::text::bigint, event_type, payload::text, created_at,
       key, traceparent, tracestate FROM late
UNION ALL
SELECT 'c', NULL, xid::text::bigint, NULL, NULL, NULL, NULL, NULL, NULL FROM continuing;

-- name: feed_head
-- The cursor of "now": the largest visible id, and the snapshot's view of
-- what is still in progress (any such transaction may own an id below it).
SELECT pg_current_snapshot()::text, coalesce((SELECT max(id) FROM outbox.events), 0);

-- name: ops_retry_delivery
-- An operator's "retry now": due now and pending whatever the status was,
-- unless a worker holds it at this moment (pending, claimed, lease not yet
-- run out): moving its due_at would let a second worker send it at the same
-- time and void the first worker's record. delivered_at goes with success.
UPDATE outbox.deliveries
SET status = 'pending', due_at = now(), next_retry_at = NULL, delivered_at = NULL,
    locked_by = NULL, updated_at = now()
WHERE id = %(delivery_id)s AND webhook_id = %(webhook_id)s
  AND NOT (status = 'pending' AND locked_by IS NOT NULL AND due_at > now());

-- name: ops_delivery
-- One delivery in the API's shape; the payload comes from the event.
SELECT d.id, d.webhook_id, d.event_id, d.event_type, e.payload, d.response_status,
       d.response_body, d.status, d.error_message, d.attempt_number, d.created_at,
       d.delivered_at, d.next_retry_at
FROM outbox.deliveries d
LEFT JOIN outbox.events e ON e.id = d.event_id
WHERE d.id = %(delivery_id)s AND d.webhook_id = %(webhook_id)s;

-- name: ops_recover_failed
-- Re-queue a webhook's failed deliveries created since a time (after an
-- endpoint outage is fixed); deliveries_webhook_id_idx finds them.
UPDATE outbox.deliveries
SET status = 'pending', due_at = now(), next_retry_at = NULL, locked_by = NULL,
    updated_at = now()
WHERE webhook_id = %(webhook_id)s AND status = 'failed' AND created_at >= %(since)s;

-- name: ops_send_test
-- Publish a webhook.test event and its delivery to this one webhook, in the
-- caller's transaction. The dispatcher may match the event to this webhook
-- too; the (event_id, webhook_id, replay) key makes its insert a no-op.
WITH w AS (
    SELECT id, name FROM outbox.webhooks WHERE id = %(webhook_id)s
), ev AS (
    SELECT w.id AS webhook_id,
           outbox.publish('webhook.test', jsonb_build_object(
               'webhook_id', w.id, 'name', w.name, 'test', true,
               'message', 'Test event from outbox-relay')) AS event_id
    FROM w
)
INSERT INTO outbox.deliveries (webhook_id, event_id, event_type)
SELECT webhook_id, event_id, 'webhook.test' FROM ev
ON CONFLICT ON CONSTRAINT deliveries_webhook_event_key DO NOTHING
RETURNING id;

-- name: ops_rotate_secret
-- The current secret becomes the previous one, valid for the overlap (none
-- when the overlap is zero); senders sign with both while it lasts.
UPDATE outbox.webhooks
SET previous_secret = CASE WHEN %(overlap)s > interval '0' THEN secret END,
    previous_secret_expires_at = CASE WHEN %(overlap)s > interval '0'
                                      THEN now() + %(overlap)s END,
    secret = %(secret)s, updated_at = now()
WHERE id = %(webhook_id)s;

-- name: deliveries_wake
-- The doorbell for every delivery worker (no data: workers re-read rows).
SELECT pg_notify('outbox_deliveries', '');

-- name: feed_lag
-- What this cursor has not read yet: visible rows above it (counted up to a
-- cap, so a huge backlog costs a bounded index scan) plus late rows of the
-- transactions it waits for; and the age of the oldest of them.
WITH unread AS (
    (SELECT id, created_at FROM outbox.events
     WHERE id > %(after)s
     ORDER BY id
     LIMIT %(cap)s)
    UNION ALL
    SELECT id, created_at FROM outbox.events
    WHERE (xid = ANY (%(pending)s::text[]::xid8[]) OR xid >= %(xmax)s::text::xid8)
      AND id <= %(after)s
)
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM unread;

-- name: relay_state_get
SELECT value FROM outbox.relay_state WHERE name = %(name)s;

-- name: leader_try_lock
-- Session-level: held until this session ends (relay/leader.py).
SELECT pg_try_advisory_lock(%(key)s);

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
--   rang     NOTIFY outbox_deliveries (fires at commit) when rows were created.
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
    SELECT pg_notify('outbox_deliveries', '') FROM (SELECT 1 FROM created LIMIT 1) AS any_created
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM created), (SELECT count(*) FROM rang);

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
-- %(limit)s ids after %(from)s, up to the dispatcher's stored cursor, and
-- delete those older than the retention that the dispatcher has handled
-- (not written by a transaction its cursor still waits for) and that no
-- pending delivery needs (deliveries_pending_event_idx). The largest id
-- deleted raises the retention watermark in the same transaction. Returns
-- rows scanned, last id scanned, rows deleted, the new watermark (NULL when
-- unchanged) and whether the walk reached an event too young to delete.
WITH scan AS MATERIALIZED (
    SELECT id, xid, created_at
    FROM outbox.events
    WHERE id > %(from)s AND id <= %(max_id)s
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
    SELECT 'retention_watermark', max(id)::text FROM gone HAVING count(*) > 0
    ON CONFLICT (name) DO UPDATE
        SET value = greatest(s.value::bigint, EXCLUDED.value::bigint)::text, updated_at = now()
    RETURNING value
)
SELECT (SELECT count(*) FROM scan), (SELECT max(id) FROM scan), (SELECT count(*) FROM gone),
       (SELECT value FROM mark),
       coalesce((SELECT bool_or(created_at >= now() - %(keep)s::interval) FROM scan), false);

-- name: delivery_claim
-- Claim due deliveries of active webhooks: FOR UPDATE OF d SKIP LOCKED lets
-- any number of workers claim at once without waiting for or doubling each
-- other (webhook rows are read, not locked). The claim moves due_at to the
-- end of the lease, so a crashed worker's deliveries become due again; the
-- new due_at is also the claim's fencing token (see delivery_record).
-- Webhooks whose endpoint this worker already has enough of are skipped.
-- A delivery whose event is gone (LEFT JOIN) comes back with a NULL payload.
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
    UPDATE outbox.deliveries d
    SET due_at = now() + %(lease)s, locked_by = %(worker)s
    FROM due
    WHERE d.id = due.id
    RETURNING d.id, d.webhook_id, d.event_id, d.event_type, d.attempt_number, d.due_at
)
SELECT c.id, c.webhook_id, c.event_id, c.event_type, c.attempt_number + 1, c.due_at,
       e.payload, e.created_at, w.url, w.secret,
       CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END,
       w.payload_format,
       -- X-Webhook-Signature during a rotation: the previous secret while it
       -- is valid when the operator chose seed_signature 'old' (sql/004).
       CASE WHEN w.previous_secret_expires_at > now() AND w.seed_signature = 'old'
            THEN w.previous_secret ELSE w.secret END,
       e.key, e.traceparent, e.tracestate
FROM claimed c
JOIN outbox.webhooks w ON w.id = c.webhook_id
LEFT JOIN outbox.events e ON e.id = c.event_id;

-- name: delivery_insert_attempts
-- Every attempt, one row each, many per round trip. A delivery deleted
-- meanwhile (its webhook was deleted) has no row to refer to any more.
INSERT INTO outbox.delivery_attempts
    (delivery_id, attempt_number, started_at, duration_ms, outcome,
     response_status, response_body, error_class, error_message,
     request_headers, response_headers)
SELECT r.delivery_id, r.attempt_number, to_timestamp(r.started_at), r.duration_ms, r.outcome,
       r.response_status, r.response_body, r.error_class, r.error_message,
       r.request_headers::jsonb, r.response_headers::jsonb
FROM unnest(%(delivery_id)s::bigint[], %(attempt_number)s::int[], %(started_at)s::float8[],
            %(duration_ms)s::float8[], %(outcome)s::text[], %(response_status)s::int[],
            %(response_body)s::text[], %(error_class)s::text[], %(error_message)s::text[],
            %(request_headers)s::text[], %(response_headers)s::text[])
     AS r(delivery_id, attempt_number, started_at, duration_ms, outcome,
          response_status, response_body, error_class, error_message,
          request_headers, response_headers)
WHERE EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.id = r.delivery_id);

-- name: delivery_record
-- The delivery rows after their latest attempt, fenced by the lease: a row
-- whose due_at is no longer our claim's was re-claimed after our lease ran
-- out (or re-queued by an operator) and is not ours to write. "hold" keeps
-- the claim (another attempt follows in memory); "delay" is the wait before
-- the next attempt (NULL: none follows).
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
FROM unnest(%(id)s::bigint[], %(lease)s::timestamptz[], %(status)s::text[],
            %(attempt_number)s::int[], %(delay)s::float8[], %(hold)s::bool[],
            %(response_status)s::int[], %(response_body)s::text[], %(error_message)s::text[])
     AS r(id, lease, status, attempt_number, delay, hold, response_status, response_body,
          error_message)
WHERE d.id = r.id AND d.due_at = r.lease AND d.status = 'pending'
RETURNING d.id, d.status;

-- name: delivery_release
-- Give claimed deliveries back unattempted (shutdown, or more than this
-- worker takes for one endpoint), due after "delay" seconds.
UPDATE outbox.deliveries d
SET due_at = now() + make_interval(secs => r.delay), locked_by = NULL, updated_at = now()
FROM unnest(%(id)s::bigint[], %(lease)s::timestamptz[], %(delay)s::float8[]) AS r(id, lease, delay)
WHERE d.id = r.id AND d.due_at = r.lease AND d.status = 'pending';

-- name: delivery_webhook_stats
-- Counters and the continuous-failure clock, one row per webhook per flush.
-- Rows are locked in id order first (FOR NO KEY UPDATE: it does not block
-- the dispatcher's foreign-key checks) so that concurrent flushes touching
-- the same webhooks cannot deadlock. failing_since: the first failure after
-- the latest success; a success clears it unless a newer failure is known.
WITH r AS (
    SELECT * FROM unnest(%(webhook_id)s::bigint[], %(ok)s::int[], %(failed)s::int[],
                         %(last_at)s::float8[], %(last_ok_at)s::float8[],
                         %(first_fail_at)s::float8[], %(fail_after_ok)s::float8[])
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
           'failing_since', failing_since))
FROM disabled ORDER BY id;

-- name: delivery_publish_failed
-- webhook.delivery_failed for deliveries this flush moved to failed.
SELECT outbox.publish('webhook.delivery_failed', jsonb_build_object(
           'delivery_id', d.id, 'webhook_id', d.webhook_id, 'event_id', d.event_id,
           'event_type', d.event_type, 'attempts', d.attempt_number,
           'response_status', d.response_status, 'error_message', d.error_message))
FROM outbox.deliveries d
WHERE d.id = ANY(%(ids)s::bigint[])
ORDER BY d.id;

-- name: delivery_pending_count
-- For the pending-deliveries gauge (index-only on deliveries_due_idx).
SELECT count(*) FROM outbox.deliveries WHERE status = 'pending';
