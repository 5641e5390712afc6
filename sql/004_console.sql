-- 004: what the admin console needs from the schema.
--
-- Replays. POST /webhooks/{id}/replay makes NEW deliveries of events that
-- may already have one (delivered, failed or pending) to the same webhook.
-- "One delivery per (webhook, event)" becomes "one per (webhook, event,
-- replay)": the dispatcher always inserts replay 0, so its ON CONFLICT on
-- the same constraint name still makes a re-dispatched batch a no-op; the
-- n-th replay of an event to a webhook is replay n. The key leads with
-- event_id so that the same index answers "the deliveries of this event"
-- (GET /events/{id}/deliveries) without an index of its own.
ALTER TABLE outbox.deliveries
    ADD COLUMN replay integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT deliveries_replay_not_negative CHECK (replay >= 0),
    DROP CONSTRAINT deliveries_webhook_event_key,
    ADD CONSTRAINT deliveries_webhook_event_key UNIQUE (event_id, webhook_id, replay);

-- What an attempt sent and got back, for the console's delivery inspector:
-- the request headers as sent, signature values redacted (a signature is no
-- secret, but it is no use to a reader either and invites copy-paste
-- replays), and the response headers as received (bounded by the client's
-- head limit). NULL for attempts recorded before this migration.
ALTER TABLE outbox.delivery_attempts
    ADD COLUMN request_headers jsonb,
    ADD COLUMN response_headers jsonb;

-- Secret rotation: which secret signs the seed's X-Webhook-Signature during
-- the overlap. It has room for one signature: 'old' keeps the previous
-- secret there until the overlap ends (a seed-style receiver keeps working
-- and switches when the overlap is over), 'new' switches it at once.
-- Standard Webhooks' webhook-signature carries both during the overlap
-- either way.
ALTER TABLE outbox.webhooks
    ADD COLUMN seed_signature text NOT NULL DEFAULT 'old',
    ADD CONSTRAINT webhooks_seed_signature_check CHECK (seed_signature IN ('old', 'new'));
