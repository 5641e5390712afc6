-- 009: event ids never go backwards (relay/progress.py).
--
-- TRUNCATE outbox.events RESTART IDENTITY restarts outbox.events_id_seq at 1:
-- new events would then reuse ids that receivers have already seen (the
-- webhook-id evt_N) and that old delivery rows still hold. Before the
-- TRUNCATE we note the sequence's position (transaction-local), after it we
-- put the sequence back there. A plain TRUNCATE leaves the sequence alone and
-- so is unaffected. Other resets (ALTER SEQUENCE ... RESTART, setval) are
-- caught by the dispatcher, which refuses to dispatch until
-- `outbox repair --fix-sequence` has run.
CREATE FUNCTION outbox.events_truncate_note() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config(
        'outbox.id_floor',
        (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
         FROM outbox.events_id_seq)::text,
        true);
    RETURN NULL;
END
$$;

CREATE FUNCTION outbox.events_truncate_restore() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    floor bigint := nullif(current_setting('outbox.id_floor', true), '')::bigint;
BEGIN
    IF floor IS NOT NULL AND floor > 0 AND floor > (
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
        FROM outbox.events_id_seq
    ) THEN
        PERFORM setval('outbox.events_id_seq', floor, true);
        RAISE WARNING 'outbox: outbox.events_id_seq kept at % after TRUNCATE ... RESTART IDENTITY (event ids never go backwards)', floor;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_truncate_note BEFORE TRUNCATE ON outbox.events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.events_truncate_note();
CREATE TRIGGER events_truncate_restore AFTER TRUNCATE ON outbox.events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.events_truncate_restore();
