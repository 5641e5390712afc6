-- The relay's side of the NOTIFY doorbell (relay/doorbell.py); the writers'
-- side is outbox.publish and the capture triggers (sql/003_doorbell.sql).
-- %(key)s is outbox.names.DOORBELL_KEY, the key those functions probe.

-- name: doorbell_lock
-- Exclusive and session-level: granted only once every writer holding the
-- lock shared has committed or rolled back, and held until doorbell_unlock,
-- so every commit from then on rings. The request may wait; the relay
-- cancels it when a notification or its timer comes first.
SELECT pg_advisory_lock(%(key)s);

-- name: doorbell_unlock
-- unlock_all, not unlock: session locks nest (a cancelled request may have
-- been granted in the race), and the doorbell connection holds nothing else.
SELECT pg_advisory_unlock_all();
