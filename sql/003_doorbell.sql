-- 003: ring the NOTIFY doorbell only when a relay is asleep.
--
-- NOTIFY takes a cluster-wide lock that is held across the commit's WAL
-- flush, so notifying transactions cannot share a group commit: at 16
-- writers it costs half the throughput. Most of the time nobody needs the
-- bell: a busy relay is reading anyway.
--
-- Protocol (relay side: relay/doorbell.py):
--   * A relay that goes to sleep first takes the doorbell advisory lock
--     EXCLUSIVELY (session level), which waits for every writer currently
--     holding it shared to commit or roll back; then it reads once more, and
--     only then waits for a notification (or its poll timer).
--   * A writer probes with pg_try_advisory_xact_lock_shared. If it gets the
--     shared lock, no relay is asleep (or about to be): the lock, held until
--     the writer's transaction ends, keeps any relay from falling asleep
--     before the writer's events are visible to its final read — no NOTIFY
--     needed. If the probe fails, a relay holds or waits for the exclusive
--     lock: the writer NOTIFYs. Several relays queue on the same key; a
--     queued exclusive request also makes the probe fail, so every relay
--     that is not reading hears the bell.
-- Postgres folds identical notifications of one transaction into one.
--
-- The key is fixed: sha256("outbox doorbell")[:8] as a signed bigint.

CREATE FUNCTION outbox.doorbell_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 9202151523130794729::bigint $$;

CREATE OR REPLACE FUNCTION outbox.publish(p_event_type text, p_payload jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_event_type IS NULL OR p_event_type !~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$' THEN
        RAISE EXCEPTION 'invalid event type: %', p_event_type
            USING ERRCODE = '22023',
                  HINT = 'event types are lowercase dotted names such as user.created';
    END IF;
    INSERT INTO outbox.events (event_type, payload)
    VALUES (p_event_type, coalesce(p_payload, 'null'::jsonb))
    RETURNING id INTO v_id;
    IF NOT pg_try_advisory_xact_lock_shared(9202151523130794729) THEN
        PERFORM pg_notify('outbox_events', '');
    END IF;
    RETURN v_id;
END
$$;
