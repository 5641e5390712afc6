-- 012: per-key ordered delivery (CONTRACT.md "Keys and per-key order").
--
-- A webhook with ordering 'key' gets its deliveries of keyed events in
-- queues, one per (webhook, key), in delivery id order (the dispatcher
-- inserts in feed order). Only the queue's head may be claimed; the rest
-- wait. docs/webhooks.md "Per-key order" has the whole argument; in short:
--
-- * A waiting delivery is pending with due_at = 'infinity'. The claim
--   (sql/delivery.sql delivery_claim) takes rows with due_at <= now(), so it
--   never reaches one: waiting rows are not claimed, not counted as
--   attempts, and cost the claim's index scan nothing however many wait
--   (they sit past its end). The head's due_at is its retry schedule (and,
--   while claimed, the lease) as for any delivery, so a crashed or
--   partitioned holder's head becomes due again for any process, and the
--   waiting rows behind it stay where they are.
-- * When a head ends (success, failed, or skipped by an operator) the same
--   transaction promotes the oldest waiting row of its queue (due now).
--   Every transaction that adds to a queue or promotes in it first locks
--   the webhook row, in an earlier statement than the one that reads the
--   queue, so under READ COMMITTED each such reader sees what every earlier
--   holder committed: none of them misses a delivery another just added,
--   and none promotes a second head.
-- * And the database refuses a second head anyway: deliveries_key_head_key
--   allows one non-waiting pending delivery per (webhook, key).
--
-- key on a delivery is set only for webhooks with ordering 'key' (and
-- keyed events), so unordered deliveries leave both partial indexes alone:
-- their writes cost what they cost before.

ALTER TABLE outbox.webhooks
    ADD COLUMN ordering text NOT NULL DEFAULT 'none',
    ADD CONSTRAINT webhooks_ordering_check CHECK (ordering IN ('none', 'key'));

ALTER TABLE outbox.deliveries
    ADD COLUMN key text,
    -- Only a pending keyed delivery can wait: anything else at 'infinity'
    -- would never be claimed again.
    ADD CONSTRAINT deliveries_waiting_is_keyed_pending
        CHECK (due_at < 'infinity' OR (key IS NOT NULL AND status = 'pending'));

-- One queue: the pending deliveries of a (webhook, key), oldest first. The
-- promotion's "oldest waiting" and the operator view's counts read it.
CREATE INDEX deliveries_key_queue_idx ON outbox.deliveries (webhook_id, key, id)
    WHERE status = 'pending' AND key IS NOT NULL;

-- The heads: at most one pending, not waiting, delivery per (webhook, key).
-- The promotion's "has this queue a head?" is one probe of it.
CREATE UNIQUE INDEX deliveries_key_head_key ON outbox.deliveries (webhook_id, key)
    WHERE status = 'pending' AND key IS NOT NULL AND due_at < 'infinity';
