-- Operator actions on deliveries and secrets (relay/delivery/ops.py; the API's verbs
-- call them).

-- name: ops_retry_delivery
-- An operator's "retry now": due now and pending whatever the status was,
-- unless a worker holds it at this moment (pending, claimed, lease not yet
-- run out): moving its due_at would let a second worker send it at the same
-- time and void the first worker's record. delivered_at goes with success.
-- Per-key order (sql/012_key_ordering.sql; the caller holds the webhook
-- lock): a delivery waiting in its key's queue keeps its place (never due
-- before its head ended); the head itself is retried now; a finished keyed
-- delivery of a webhook ordered by key joins its queue again, waiting (the
-- caller's delivery_promote makes it the head if the queue has none), and
-- one of a webhook no longer ordered loses its key. In SET, d.status is
-- the value before the update.
UPDATE outbox.deliveries d
SET status = 'pending', next_retry_at = NULL, delivered_at = NULL,
    locked_by = NULL, updated_at = now(),
    key = CASE WHEN d.status = 'pending' OR w.ordering = 'key' THEN d.key END,
    due_at = CASE WHEN d.status <> 'pending' AND w.ordering = 'key' AND d.key IS NOT NULL
                  THEN 'infinity' ELSE now() END
FROM outbox.webhooks w
WHERE w.id = d.webhook_id AND d.id = %(delivery_id)s AND d.webhook_id = %(webhook_id)s
  AND d.due_at < 'infinity'
  AND NOT (d.status = 'pending' AND d.locked_by IS NOT NULL AND d.due_at > now())
RETURNING d.id, d.key;

-- name: ops_skip_delivery
-- An operator ends a pending delivery without sending it: failed, with the
-- reason as its error. For the head of a key's queue this unblocks the key
-- (the caller holds the webhook lock and promotes the next one). A delivery
-- a worker holds right now is left alone (its record would be fenced out
-- while its request may still arrive after the next one's).
UPDATE outbox.deliveries d
SET status = 'failed', due_at = now(), next_retry_at = NULL, locked_by = NULL,
    error_message = %(reason)s, updated_at = now()
WHERE d.id = %(delivery_id)s AND d.webhook_id = %(webhook_id)s AND d.status = 'pending'
  AND NOT (d.locked_by IS NOT NULL AND d.due_at > now() AND d.due_at < 'infinity')
RETURNING d.id, d.key;

-- name: ops_delivery_state
-- Why a retry or a skip changed nothing: the delivery as it is now, and
-- the head it waits behind when it waits in a key's queue.
SELECT d.status, d.key, d.due_at = 'infinity' AS waiting,
       (d.status = 'pending' AND d.locked_by IS NOT NULL AND d.due_at > now()
        AND d.due_at < 'infinity') AS in_flight,
       (SELECT h.id FROM outbox.deliveries h
        WHERE h.webhook_id = d.webhook_id AND h.key = d.key AND h.status = 'pending'
          AND h.key IS NOT NULL AND h.due_at < 'infinity') AS head_id
FROM outbox.deliveries d
WHERE d.id = %(delivery_id)s AND d.webhook_id = %(webhook_id)s;

-- name: ops_unorder_waiting
-- ordering 'key' -> 'none' (the caller's UPDATE of the webhook row holds its
-- lock): what waits in key queues is due now, unordered. Heads keep their
-- key and end as they would; nothing is promoted after them.
UPDATE outbox.deliveries
SET key = NULL, due_at = now(), updated_at = now()
WHERE webhook_id = %(webhook_id)s AND status = 'pending' AND key IS NOT NULL
  AND due_at = 'infinity';

-- name: ops_delivery
-- One delivery in the API's shape; the payload comes from the event.
SELECT d.id, d.webhook_id, d.event_id, d.event_type, e.payload, d.response_status,
       d.response_body, d.status, d.error_message, d.attempt_number, d.created_at,
       d.delivered_at, d.next_retry_at, coalesce(d.key, e.key) AS key,
       d.due_at = 'infinity' AS waiting
FROM outbox.deliveries d
LEFT JOIN outbox.events e ON e.id = d.event_id
WHERE d.id = %(delivery_id)s AND d.webhook_id = %(webhook_id)s;

-- name: ops_recover_failed
-- Re-queue a webhook's failed deliveries created since a time (after an
-- endpoint outage is fixed); deliveries_webhook_id_idx finds them. Keyed
-- ones of a webhook ordered by key join their queues again, waiting (the
-- caller holds the webhook lock and promotes; their old ids put them
-- first, in their original order); the rest are due now.
UPDATE outbox.deliveries d
SET status = 'pending', next_retry_at = NULL, locked_by = NULL, updated_at = now(),
    key = CASE WHEN w.ordering = 'key' THEN d.key END,
    due_at = CASE WHEN w.ordering = 'key' AND d.key IS NOT NULL THEN 'infinity' ELSE now() END
FROM outbox.webhooks w
WHERE w.id = d.webhook_id AND d.webhook_id = %(webhook_id)s AND d.status = 'failed'
  AND d.created_at >= %(since)s
RETURNING d.id, d.key;

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
-- The doorbell for every delivery worker (no data: workers re-read rows);
-- %(channel)s is outbox_deliveries. NOTIFY is delivered at commit, so a
-- rolled-back action rings nothing.
SELECT pg_notify(%(channel)s, '');
