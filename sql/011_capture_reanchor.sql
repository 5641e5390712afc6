-- 011: capture state survives a dump and restore.
--
-- capture_tables holds tables by oid and columns by attnum (010). Neither
-- survives pg_dump/pg_restore: tables get new oids, and a table that had
-- dropped columns gets its attnums renumbered. The capture triggers and
-- their functions do survive (they are dumped with the tables), so a rule's
-- trigger tells which table is really its own. outbox.track_reanchor()
-- moves each tracked table whose oid no longer carries its rules' triggers
-- to the table that does, re-reading every column by its name (the names
-- are stored beside the attnums) -- the same attach as a re-created table.
-- outbox migrate runs it after the migrations; until then the check reports
-- such a rule as stale, not as capturing.

CREATE FUNCTION outbox.track_reanchor() RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    t outbox.capture_tables;
    v_relid oid;
    v_moved integer := 0;
    v_internal text := current_setting('outbox.capture_internal', true);
BEGIN
    PERFORM set_config('outbox.capture_internal', 'on', true);
    FOR t IN SELECT * FROM outbox.capture_tables ORDER BY id LOOP
        SELECT tg.tgrelid INTO v_relid
        FROM outbox.capture_rules r
        JOIN pg_catalog.pg_proc p ON p.proname = r.function_name
             AND p.pronamespace = 'outbox'::regnamespace AND p.pronargs = 0
        JOIN pg_catalog.pg_trigger tg ON tg.tgfoid = p.oid AND NOT tg.tgisinternal
        WHERE r.table_id = t.id
        ORDER BY r.id
        LIMIT 1;
        CONTINUE WHEN v_relid IS NULL OR v_relid IS NOT DISTINCT FROM t.relid;
        -- Whatever row holds that oid now holds it wrongly (an oid reused
        -- by the restore): it is detached and re-anchored in its turn.
        UPDATE outbox.capture_tables SET relid = NULL WHERE relid = v_relid OR id = t.id;
        IF outbox.track_attach(t.id, v_relid, 'outbox migrate') IS NOT NULL THEN
            v_moved := v_moved + 1;
        END IF;
    END LOOP;
    PERFORM set_config('outbox.capture_internal', coalesce(v_internal, ''), true);
    RETURN v_moved;
END
$$;

-- The check tells a rule whose table lost its identity from one whose
-- table is gone.
CREATE OR REPLACE FUNCTION outbox.track_state(p_rule_id bigint, OUT state text, OUT detail text)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    r outbox.capture_rules;
    t outbox.capture_tables;
    v_src text;
    v_tg record;
    v_compiled record;
    v_elsewhere regclass;
BEGIN
    SELECT * INTO r FROM outbox.capture_rules WHERE id = p_rule_id;
    SELECT * INTO t FROM outbox.capture_tables WHERE id = r.table_id;
    SELECT tg.tgrelid::regclass INTO v_elsewhere
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_trigger tg ON tg.tgfoid = p.oid AND NOT tg.tgisinternal
    WHERE p.proname = r.function_name AND p.pronamespace = 'outbox'::regnamespace
      AND p.pronargs = 0 AND tg.tgrelid IS DISTINCT FROM t.relid
    LIMIT 1;
    IF v_elsewhere IS NOT NULL THEN
        state := 'stale';
        detail := format('the rule''s trigger is on %s, which outbox does not know as %I.%I '
                         '(restored from a dump?): outbox migrate re-anchors it',
                         v_elsewhere, t.table_schema, t.table_name);
        RETURN;
    END IF;
    IF t.relid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = t.relid) THEN
        state := 'detached';
        detail := format('table %I.%I does not exist; the rule waits for a table of that name',
                         t.table_schema, t.table_name);
        RETURN;
    END IF;
    BEGIN
        v_compiled := outbox.track_compile(p_rule_id);
    EXCEPTION WHEN SQLSTATE 'OB001' THEN
        state := 'broken';
        detail := SQLERRM;
        RETURN;
    END;
    SELECT p.prosrc INTO v_src FROM pg_catalog.pg_proc p
    WHERE p.proname = r.function_name AND p.pronamespace = 'outbox'::regnamespace
      AND p.pronargs = 0;
    IF v_src IS NULL THEN
        state := 'missing';
        detail := format('trigger function outbox.%I() does not exist', r.function_name);
        RETURN;
    END IF;
    SELECT * INTO v_tg FROM outbox.track_trigger(p_rule_id);
    IF v_tg.oid IS NULL THEN
        state := 'missing';
        detail := format('trigger %I on %I.%I does not exist', r.trigger_name,
                         t.table_schema, t.table_name);
    ELSIF v_src IS DISTINCT FROM v_compiled.source OR NOT v_tg.matches
          OR r.definition_hash IS DISTINCT FROM md5(v_compiled.source || v_compiled.trigger_sql)
    THEN
        state := 'stale';
        detail := format('trigger %I or its function differs from the rule (the table changed '
                         'without the DDL event trigger)', v_tg.name);
    ELSIF NOT v_tg.enabled THEN
        state := 'disabled';
        detail := format('trigger %I is disabled (ALTER TABLE ... DISABLE TRIGGER)', v_tg.name);
    ELSE
        state := 'ok';
    END IF;
END
$$;
