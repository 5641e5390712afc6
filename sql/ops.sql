-- Operator actions on deliveries and secrets (relay/ops.py; the API's verbs
-- call them).

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
-- The doorbell for every delivery worker (no data: workers re-read rows);
-- %(channel)s is outbox_deliveries. NOTIFY is delivered at commit, so a
-- rolled-back action rings nothing.
SELECT pg_notify(%(channel)s, '');
