-- 005: event keys and the writer's trace context.
--
-- key: what per-key ordering orders by (CONTRACT "Keys and per-key order"):
-- set by `outbox track --key` or outbox.publish(..., key => ...).
-- traceparent / tracestate: the W3C trace context of the writing
-- transaction (`SET LOCAL outbox.traceparent = '00-...'`), carried to /ws,
-- /events, webhook headers and sinks (CONTRACT "Trace context").
--
-- All three are nullable with no default, so ADD COLUMN only changes the
-- catalog (no table rewrite), and a keyless, traceless event costs what it
-- cost before: its row gets a null bitmap, nothing else. No index: nothing
-- reads events by key or trace (per-key order is enforced on deliveries),
-- and an index would tax every write.
ALTER TABLE outbox.events
    ADD COLUMN key         text,
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate  text;

-- The rule's --key columns (empty: keyless).
ALTER TABLE outbox.capture_rules
    ADD COLUMN key_columns text[] NOT NULL DEFAULT '{}';

-- outbox.trace_context(traceparent, tracestate): the pair to store, or NULLs.
--
-- A value that is not a W3C version-00 traceparent (lowercase hex, no
-- all-zero trace or span id) is dropped with a WARNING: a bad header passed
-- through by an application must never break its write. Called by capture
-- triggers and publish only when a traceparent is set at all, so traceless
-- writes pay for one current_setting() and nothing else. When the value
-- came from the transaction's setting (from_setting), an invalid one is
-- cleared for the rest of the transaction so the warning is given once,
-- not once per row.
CREATE FUNCTION outbox.trace_context(
    p_traceparent text, p_tracestate text, from_setting boolean DEFAULT false,
    OUT traceparent text, OUT tracestate text
)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    p_traceparent := nullif(btrim(p_traceparent), '');
    IF p_traceparent IS NULL THEN
        RETURN;
    END IF;
    IF p_traceparent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       OR substr(p_traceparent, 4, 32) = repeat('0', 32)
       OR substr(p_traceparent, 37, 16) = repeat('0', 16) THEN
        RAISE WARNING 'outbox: ignoring invalid traceparent %', left(p_traceparent, 80)
            USING HINT = 'expected 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>';
        IF from_setting THEN
            PERFORM set_config('outbox.traceparent', '', true);
        END IF;
        RETURN;
    END IF;
    traceparent := p_traceparent;
    tracestate := nullif(btrim(p_tracestate), '');
    IF length(tracestate) > 512 THEN
        RAISE WARNING 'outbox: ignoring a tracestate longer than 512 characters';
        tracestate := NULL;
    END IF;
END
$$;

-- publish gains key and traceparent. The two-argument call keeps working
-- through the defaults; dropping the old signature first keeps the call
-- unambiguous. An explicit traceparent wins over the transaction's setting.
DROP FUNCTION outbox.publish(text, jsonb);
CREATE FUNCTION outbox.publish(
    p_event_type text, p_payload jsonb, key text DEFAULT NULL, traceparent text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_id bigint;
    v_tp text := publish.traceparent;
    v_ts text;
    v_setting boolean := false;
BEGIN
    IF p_event_type IS NULL OR p_event_type !~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$' THEN
        RAISE EXCEPTION 'invalid event type: %', p_event_type
            USING ERRCODE = '22023',
                  HINT = 'event types are lowercase dotted names such as user.created';
    END IF;
    IF v_tp IS NULL THEN
        v_tp := nullif(current_setting('outbox.traceparent', true), '');
        v_setting := true;
    END IF;
    IF v_tp IS NOT NULL THEN
        SELECT c.traceparent, c.tracestate INTO v_tp, v_ts
        FROM outbox.trace_context(v_tp, current_setting('outbox.tracestate', true), v_setting) c;
    END IF;
    INSERT INTO outbox.events (event_type, payload, key, traceparent, tracestate)
    VALUES (p_event_type, coalesce(p_payload, 'null'::jsonb), publish.key, v_tp, v_ts)
    RETURNING id INTO v_id;
    IF NOT pg_try_advisory_xact_lock_shared(9202151523130794729) THEN
        PERFORM pg_notify('outbox_events', '');
    END IF;
    RETURN v_id;
END
$$;
