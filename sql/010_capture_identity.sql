-- 010: schema-aware capture (issue 21).
--
-- Capture state refers to tables and columns by identity (pg_class oid,
-- attnum), not by name, so renames keep capture, exclusions, --of and --key
-- working. The column policy (--columns / --exclude) belongs to the table
-- and applies to every rule on it. The trigger compiler lives here, in the
-- database, because the DDL event trigger at the end of this file must
-- regenerate a rule inside the very transaction that changed its table;
-- `outbox track` (outbox/capture.py) calls the same functions, so there is
-- one compiler. docs/capture.md lists every DDL case and its outcome.
--
-- Errors raised for users carry SQLSTATE OB001 (a rule cannot be compiled:
-- outbox/capture.py shows the message as the CLI's one line) or OB002 (a
-- DDL statement refused because it would leak an excluded column or end a
-- rule; the message names the rule).

-- One row per tracked table. relid NULL: the table was dropped and no
-- successor took its place; its rules wait for a table with one of its
-- names (table_schema.table_name or previous_names) and are reported as
-- detached meanwhile.
CREATE TABLE outbox.capture_tables (
    id              bigint   GENERATED ALWAYS AS IDENTITY,
    relid           oid,
    table_schema    text     NOT NULL,
    table_name      text     NOT NULL,
    previous_names  text[]   NOT NULL DEFAULT '{}',
    policy          text     NOT NULL DEFAULT 'all',
    policy_attnums  smallint[] NOT NULL DEFAULT '{}',
    policy_columns  text[]   NOT NULL DEFAULT '{}',
    columns_seen    jsonb    NOT NULL DEFAULT '[]',
    -- Excluded columns that were dropped: a column added later under one of
    -- these names is excluded too (drop and re-add is how a type changes).
    retired_exclusions text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT capture_tables_pkey PRIMARY KEY (id),
    CONSTRAINT capture_tables_relid_key UNIQUE (relid),
    CONSTRAINT capture_tables_policy_check CHECK (policy IN ('all', 'columns', 'exclude')),
    CONSTRAINT capture_tables_policy_shape CHECK (
        cardinality(policy_attnums) = cardinality(policy_columns)
        AND (policy = 'columns') <= (cardinality(policy_attnums) > 0)
        AND (policy = 'all') <= (cardinality(policy_attnums) = 0
                                 AND cardinality(retired_exclusions) = 0))
);

ALTER TABLE outbox.capture_rules
    ADD COLUMN table_id    bigint,
    ADD COLUMN level       text,
    ADD COLUMN of_attnums  smallint[] NOT NULL DEFAULT '{}',
    ADD COLUMN key_attnums smallint[] NOT NULL DEFAULT '{}';

-- Existing rules: one table row each, with the most restrictive policy
-- their rules had (the intersection of --columns lists, else the union of
-- --exclude lists): moving the policy to the table must not widen a payload.
INSERT INTO outbox.capture_tables (relid, table_schema, table_name, policy,
                                   policy_attnums, policy_columns)
SELECT c.oid, g.table_schema, g.table_name,
       CASE WHEN g.cols IS NOT NULL THEN 'columns'
            WHEN cardinality(g.excl) > 0 THEN 'exclude' ELSE 'all' END,
       coalesce((SELECT array_agg(a.attnum ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND NOT a.attisdropped
                   AND a.attname = ANY (CASE WHEN g.cols IS NOT NULL THEN g.cols
                                             ELSE g.excl END)), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND NOT a.attisdropped
                   AND a.attname = ANY (CASE WHEN g.cols IS NOT NULL THEN g.cols
                                             ELSE g.excl END)), '{}')
FROM (
    SELECT r.table_schema, r.table_name,
           CASE WHEN bool_or(r.columns IS NOT NULL) THEN
               (SELECT array_agg(DISTINCT x) FROM outbox.capture_rules r2, unnest(r2.columns) x
                WHERE r2.table_schema = r.table_schema AND r2.table_name = r.table_name
                  AND NOT EXISTS (
                      SELECT 1 FROM outbox.capture_rules r3
                      WHERE r3.table_schema = r.table_schema AND r3.table_name = r.table_name
                        AND r3.columns IS NOT NULL AND NOT x = ANY (r3.columns))
                  AND NOT EXISTS (
                      SELECT 1 FROM outbox.capture_rules r4
                      WHERE r4.table_schema = r.table_schema AND r4.table_name = r.table_name
                        AND x = ANY (r4.exclude_columns)))
           END AS cols,
           (SELECT coalesce(array_agg(DISTINCT x), '{}') FROM outbox.capture_rules r2,
                   unnest(r2.exclude_columns) x
            WHERE r2.table_schema = r.table_schema AND r2.table_name = r.table_name) AS excl
    FROM outbox.capture_rules r
    GROUP BY r.table_schema, r.table_name
) g
LEFT JOIN pg_namespace n ON n.nspname = g.table_schema
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = g.table_name;
-- A --columns policy none of whose columns exist any more cannot be kept.
UPDATE outbox.capture_tables SET policy = 'all'
WHERE policy <> 'all' AND cardinality(policy_attnums) = 0;

UPDATE outbox.capture_rules r SET
    table_id = t.id,
    level = CASE WHEN r.operation = 'update' THEN 'row' ELSE 'statement' END,
    of_attnums = coalesce((SELECT array_agg(a.attnum ORDER BY o.n) FROM
        unnest(r.of_columns) WITH ORDINALITY o(name, n)
        JOIN pg_attribute a ON a.attrelid = t.relid AND a.attname = o.name
                           AND NOT a.attisdropped), '{}'),
    key_attnums = coalesce((SELECT array_agg(a.attnum ORDER BY k.n) FROM
        unnest(r.key_columns) WITH ORDINALITY k(name, n)
        JOIN pg_attribute a ON a.attrelid = t.relid AND a.attname = k.name
                           AND NOT a.attisdropped), '{}')
FROM outbox.capture_tables t
WHERE t.table_schema = r.table_schema AND t.table_name = r.table_name;

ALTER TABLE outbox.capture_rules
    DROP CONSTRAINT capture_rules_table_op_event_key,
    DROP COLUMN columns,
    DROP COLUMN exclude_columns,
    ALTER COLUMN table_id SET NOT NULL,
    ALTER COLUMN level SET NOT NULL,
    ADD CONSTRAINT capture_rules_table_fkey FOREIGN KEY (table_id)
        REFERENCES outbox.capture_tables (id) ON DELETE CASCADE,
    ADD CONSTRAINT capture_rules_table_op_event_key UNIQUE (table_id, operation, event_type),
    ADD CONSTRAINT capture_rules_level_check CHECK (
        level = 'row' OR (level = 'statement' AND operation IN ('insert', 'delete')));

-- A column of a table by identity: its current name, or NULL once dropped.
CREATE FUNCTION outbox.track_attname(p_relid oid, p_attnum smallint) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT attname::text FROM pg_catalog.pg_attribute
    WHERE attrelid = p_relid AND attnum = p_attnum AND NOT attisdropped
$$;

-- The table's columns as [{attnum, name, type}], the shape of columns_seen.
CREATE FUNCTION outbox.track_columns(p_relid oid) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'attnum', a.attnum, 'name', a.attname,
               'type', pg_catalog.format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '[]')
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Raise OB001 naming the rule when one of its columns is gone.
CREATE FUNCTION outbox.track_names(
    p_relid oid, p_attnums smallint[], p_flag text, p_rule text
) RETURNS text[]
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_out text[] := '{}';
    v_name text;
    n smallint;
BEGIN
    FOREACH n IN ARRAY p_attnums LOOP
        v_name := outbox.track_attname(p_relid, n);
        IF v_name IS NULL THEN
            RAISE EXCEPTION 'outbox: rule % needs a column that no longer exists (% attnum %)',
                p_rule, p_flag, n USING ERRCODE = 'OB001';
        END IF;
        v_out := v_out || v_name;
    END LOOP;
    RETURN v_out;
END
$$;

-- "schema.table op -> event" for messages.
CREATE FUNCTION outbox.track_label(p_rule_id bigint) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format('%s.%s %s -> %s', t.table_schema, t.table_name, r.operation, r.event_type)
    FROM outbox.capture_rules r JOIN outbox.capture_tables t ON t.id = r.table_id
    WHERE r.id = p_rule_id
$$;

-- The compiled rule: the trigger function's source, the CREATE TRIGGER
-- statement, and (statement-level rules) a SELECT over the table that
-- plans the same expressions, so a bad --when fails at track time instead
-- of at the application's first write. Names come from the catalog now.
CREATE FUNCTION outbox.track_compile(
    p_rule_id bigint, OUT source text, OUT trigger_sql text, OUT check_sql text
)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    r outbox.capture_rules;
    t outbox.capture_tables;
    v_label text;
    v_row text;
    v_payload text;
    v_key text;
    v_conditions text[] := '{}';
    v_policy text[];
    v_of text[];
    v_keys text[];
    v_visible text[];
    v_target text;
    v_select text;
    v_ring text := E'IF NOT pg_try_advisory_xact_lock_shared(9202151523130794729) THEN\n'
                   '        PERFORM pg_notify(''outbox_events'', '''');\n'
                   '    END IF;';
    v_trace text := E'    IF outbox_capture.tp IS NOT NULL THEN\n'
                    '        SELECT c.traceparent, c.tracestate INTO outbox_capture.tp, outbox_capture.ts\n'
                    '        FROM outbox.trace_context(outbox_capture.tp,'
                    ' current_setting(''outbox.tracestate'', true), true) AS c;\n'
                    '    END IF;';
    v_declare text := E'<<outbox_capture>>\nDECLARE\n'
                      '    tp text := nullif(current_setting(''outbox.traceparent'', true), '''');\n'
                      '    ts text;\n';
    c text;
BEGIN
    SELECT * INTO r FROM outbox.capture_rules WHERE id = p_rule_id;
    SELECT * INTO t FROM outbox.capture_tables WHERE id = r.table_id;
    IF t.relid IS NULL THEN
        RAISE EXCEPTION 'outbox: table %.% of rule % -> % does not exist',
            t.table_schema, t.table_name, r.operation, r.event_type USING ERRCODE = 'OB001';
    END IF;
    v_label := format('%s.%s %s -> %s', t.table_schema, t.table_name, r.operation, r.event_type);
    v_row := CASE WHEN r.operation = 'delete' THEN 'OLD' ELSE 'NEW' END;
    v_policy := outbox.track_names(t.relid, t.policy_attnums, '--' || t.policy, v_label);
    v_of := outbox.track_names(t.relid, r.of_attnums, '--of', v_label);
    v_keys := outbox.track_names(t.relid, r.key_attnums, '--key', v_label);

    IF t.policy = 'columns' THEN
        SELECT 'jsonb_build_object(' || string_agg(format('%L, %s.%I', x, v_row, x), ', ' ORDER BY o) || ')'
        INTO v_payload FROM unnest(v_policy) WITH ORDINALITY u(x, o);
    ELSIF t.policy = 'exclude' THEN
        SELECT format('(to_jsonb(%s) - ARRAY[%s]::text[])', v_row,
                      string_agg(format('%L', x), ', ' ORDER BY o))
        INTO v_payload FROM unnest(v_policy) WITH ORDINALITY u(x, o);
    ELSE
        v_payload := format('to_jsonb(%s)', v_row);
    END IF;
    IF cardinality(v_of) > 0 THEN
        v_visible := ARRAY(SELECT x FROM unnest(v_of) WITH ORDINALITY u(x, o)
                           WHERE CASE t.policy WHEN 'columns' THEN x = ANY (v_policy)
                                               WHEN 'exclude' THEN NOT x = ANY (v_policy)
                                               ELSE true END ORDER BY o);
        IF cardinality(v_visible) > 0 THEN
            SELECT v_payload || ' || jsonb_build_object(''previous'', jsonb_build_object('
                   || string_agg(format('%L, OLD.%I', x, x), ', ' ORDER BY o) || '))'
            INTO v_payload FROM unnest(v_visible) WITH ORDINALITY u(x, o);
        END IF;
        SELECT '(' || string_agg(format('OLD.%I IS DISTINCT FROM NEW.%I', x, x), ' OR ' ORDER BY o) || ')'
        INTO c FROM unnest(v_of) WITH ORDINALITY u(x, o);
        v_conditions := v_conditions || c;
    END IF;
    IF r.when_sql IS NOT NULL THEN
        v_conditions := v_conditions || ('(' || r.when_sql || ')');
    END IF;
    IF cardinality(v_keys) = 0 THEN
        v_key := 'NULL::text';
    ELSIF cardinality(v_keys) = 1 THEN
        v_key := format('(%s.%I)::text', v_row, v_keys[1]);
    ELSE
        SELECT format('CASE WHEN num_nonnulls(%s) > 0 THEN concat(%s) END',
                      string_agg(format('(%s.%I)::text', v_row, x), ', ' ORDER BY o),
                      string_agg(format('(%s.%I)::text', v_row, x), ', '':'', ' ORDER BY o))
        INTO v_key FROM unnest(v_keys) WITH ORDINALITY u(x, o);
    END IF;
    -- The table's name now, from the catalog (a rename nobody synced shows
    -- the rule as stale rather than quietly keeping an old name).
    SELECT format('%I.%I', n.nspname, c.relname) INTO v_target
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = t.relid;

    IF r.level = 'statement' THEN
        -- One INSERT ... SELECT over the transition table per statement. The
        -- alias is the row variable's name and use_column makes NEW.col /
        -- OLD.col in --when and the payload refer to it.
        v_select := format(E'SELECT %L, %s, %s, @@outbox_trace@@\n    FROM @@outbox_from@@ AS %s%s',
                           r.event_type, v_payload, v_key, lower(v_row),
                           CASE WHEN cardinality(v_conditions) > 0
                                THEN E'\n    WHERE (' || array_to_string(v_conditions, ' AND ') || ')'
                                ELSE '' END);
        check_sql := replace(replace(v_select, '@@outbox_trace@@', 'NULL::text, NULL::text'),
                             '@@outbox_from@@', v_target);
        source := format(E'\n-- outbox capture rule %s: %s -> %s (generated; docs/capture.md)\n'
                         '#variable_conflict use_column\n%sBEGIN\n%s\n'
                         '    INSERT INTO outbox.events (event_type, payload, key, traceparent, tracestate)\n'
                         '    %s;\n    IF FOUND THEN\n        %s\n    END IF;\n    RETURN NULL;\nEND\n',
                         r.id, r.operation, r.event_type, v_declare, v_trace,
                         replace(replace(v_select, '@@outbox_trace@@',
                                         'outbox_capture.tp, outbox_capture.ts'),
                                 '@@outbox_from@@', 'outbox_rows'),
                         v_ring);
        trigger_sql := format(E'CREATE TRIGGER %I\n    AFTER %s ON %s\n'
                              '    REFERENCING %s TABLE AS outbox_rows\n'
                              '    FOR EACH STATEMENT\n    EXECUTE FUNCTION outbox.%I()',
                              r.trigger_name, upper(r.operation), v_target, v_row, r.function_name);
    ELSE
        source := format(E'\n-- outbox capture rule %s: %s -> %s (generated; docs/capture.md)\n'
                         '%sBEGIN\n%s\n'
                         '    INSERT INTO outbox.events (event_type, payload, key, traceparent, tracestate)\n'
                         '    VALUES (%L, %s, %s, outbox_capture.tp, outbox_capture.ts);\n'
                         '    %s\n    RETURN NULL;\nEND\n',
                         r.id, r.operation, r.event_type, v_declare, v_trace,
                         r.event_type, v_payload, v_key, v_ring);
        trigger_sql := format(E'CREATE TRIGGER %I\n    AFTER %s%s ON %s\n    FOR EACH ROW%s\n'
                              '    EXECUTE FUNCTION outbox.%I()',
                              r.trigger_name, upper(r.operation),
                              CASE WHEN cardinality(v_of) > 0 THEN
                                  ' OF ' || (SELECT string_agg(format('%I', x), ', ' ORDER BY o)
                                             FROM unnest(v_of) WITH ORDINALITY u(x, o))
                              ELSE '' END,
                              v_target,
                              CASE WHEN cardinality(v_conditions) > 0
                                   THEN E'\n    WHEN (' || array_to_string(v_conditions, ' AND ') || ')'
                                   ELSE '' END,
                              r.function_name);
    END IF;
END
$$;

-- The trigger of a rule as Postgres has it: found by its function (a
-- renamed trigger is still the rule's), with the parts that must match.
CREATE FUNCTION outbox.track_trigger(p_rule_id bigint)
RETURNS TABLE (oid oid, name text, enabled boolean, matches boolean)
LANGUAGE sql STABLE
AS $$
    SELECT tg.oid, tg.tgname::text, tg.tgenabled IN ('O', 'A'),
           -- tgtype: 1 row, 4 insert, 8 delete, 16 update; AFTER = no 2/64 bits
           (tg.tgtype & 95) = ((CASE WHEN r.level = 'row' THEN 1 ELSE 0 END)
                               | CASE r.operation WHEN 'insert' THEN 4
                                                  WHEN 'delete' THEN 8 ELSE 16 END)
           AND ARRAY(SELECT unnest(tg.tgattr::smallint[])) = r.of_attnums
           AND coalesce(tg.tgnewtable::text, '') =
               CASE WHEN r.level = 'statement' AND r.operation = 'insert'
                    THEN 'outbox_rows' ELSE '' END
           AND coalesce(tg.tgoldtable::text, '') =
               CASE WHEN r.level = 'statement' AND r.operation = 'delete'
                    THEN 'outbox_rows' ELSE '' END
    FROM outbox.capture_rules r
    JOIN outbox.capture_tables t ON t.id = r.table_id
    JOIN pg_catalog.pg_proc p ON p.proname = r.function_name
         AND p.pronamespace = 'outbox'::regnamespace AND p.pronargs = 0
    JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = t.relid AND tg.tgfoid = p.oid
         AND NOT tg.tgisinternal
    WHERE r.id = p_rule_id
    ORDER BY tg.oid
    LIMIT 1
$$;

-- Is the rule's trigger there, enabled and current? 'ok', 'detached' (the
-- table is gone), 'missing' (trigger or function), 'stale' (the function or
-- trigger differs from what the rule compiles to now), 'disabled', or
-- 'broken' (the rule cannot be compiled: a column it needs is gone).
CREATE FUNCTION outbox.track_state(p_rule_id bigint, OUT state text, OUT detail text)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    r outbox.capture_rules;
    t outbox.capture_tables;
    v_src text;
    v_tg record;
    v_compiled record;
BEGIN
    SELECT * INTO r FROM outbox.capture_rules WHERE id = p_rule_id;
    SELECT * INTO t FROM outbox.capture_tables WHERE id = r.table_id;
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

-- Make the rule's function and trigger what the rule compiles to now, in
-- the caller's transaction. Returns 'unchanged', 'installed' (function or
-- trigger was missing, or p_enable re-enabled a disabled trigger) or
-- 'updated' (they were stale). A disabled trigger stays disabled unless
-- p_enable (outbox track of that very rule). Writers are held
-- off by the table lock for the instant of the swap, and each statement
-- runs either the old or the new trigger, never none or both.
CREATE FUNCTION outbox.track_install(p_rule_id bigint, p_enable boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    r outbox.capture_rules;
    t outbox.capture_tables;
    v_c record;
    v_src text;
    v_tg record;
    v_result text := 'unchanged';
    v_internal text := current_setting('outbox.capture_internal', true);
    v_owner name;
    v_disabled boolean;
BEGIN
    SELECT * INTO v_tg FROM outbox.track_trigger(p_rule_id);
    v_disabled := v_tg.oid IS NOT NULL AND NOT v_tg.enabled;
    IF v_tg.oid IS NOT NULL THEN
        -- Follow an ALTER TRIGGER ... RENAME: the trigger is found by its function.
        UPDATE outbox.capture_rules SET trigger_name = v_tg.name
        WHERE id = p_rule_id AND trigger_name <> v_tg.name;
    END IF;
    SELECT * INTO r FROM outbox.capture_rules WHERE id = p_rule_id;
    SELECT * INTO t FROM outbox.capture_tables WHERE id = r.table_id;
    v_c := outbox.track_compile(p_rule_id);
    PERFORM set_config('outbox.capture_internal', 'on', true);
    IF r.level = 'statement' THEN
        BEGIN
            EXECUTE 'EXPLAIN ' || v_c.check_sql;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION '%: %',
                CASE WHEN r.when_sql IS NOT NULL THEN '--when does not compile'
                     ELSE 'cannot compile capture rule' END, SQLERRM
                USING ERRCODE = 'OB001';
        END;
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', t.relid::regclass);
    SELECT p.prosrc INTO v_src FROM pg_catalog.pg_proc p
    WHERE p.proname = r.function_name AND p.pronamespace = 'outbox'::regnamespace
      AND p.pronargs = 0;
    IF v_src IS DISTINCT FROM v_c.source THEN
        v_result := CASE WHEN v_src IS NULL THEN 'installed' ELSE 'updated' END;
        EXECUTE format('CREATE OR REPLACE FUNCTION outbox.%I() RETURNS trigger '
                       'LANGUAGE plpgsql AS %L', r.function_name, v_c.source);
        IF v_src IS NULL THEN
            -- Created by the DDL event trigger (as its owner): hand the
            -- function to the table's owner, who runs `outbox track` later.
            SELECT c.relowner::regrole::name INTO v_owner FROM pg_catalog.pg_class c
            WHERE c.oid = t.relid;
            IF v_owner IS DISTINCT FROM current_user THEN
                BEGIN
                    EXECUTE format('ALTER FUNCTION outbox.%I() OWNER TO %I',
                                   r.function_name, v_owner);
                EXCEPTION WHEN insufficient_privilege THEN
                    NULL;
                END;
            END IF;
        END IF;
    END IF;
    SELECT * INTO v_tg FROM outbox.track_trigger(p_rule_id);
    -- A changed rule (another --when, a renamed column in UPDATE OF) has
    -- another CREATE TRIGGER: recreate the trigger too.
    IF v_tg.oid IS NULL OR NOT v_tg.matches
       OR r.definition_hash IS DISTINCT FROM md5(v_c.source || v_c.trigger_sql) THEN
        IF v_tg.oid IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER %I ON %s', v_tg.name, t.relid::regclass);
            v_result := 'updated';
        ELSE
            v_result := 'installed';
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                   WHERE tgrelid = t.relid AND tgname = r.trigger_name) THEN
            -- Another trigger holds the rule's name (a stale one of ours).
            EXECUTE format('DROP TRIGGER %I ON %s', r.trigger_name, t.relid::regclass);
        END IF;
        BEGIN
            EXECUTE v_c.trigger_sql;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION '%: %',
                CASE WHEN r.when_sql IS NOT NULL THEN '--when does not compile'
                     ELSE 'cannot create the capture trigger' END, SQLERRM
                USING ERRCODE = 'OB001';
        END;
        IF v_disabled AND NOT p_enable THEN
            -- Regenerated, not re-enabled: disabling was someone's decision.
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', t.relid::regclass, r.trigger_name);
        END IF;
    ELSIF v_disabled AND p_enable THEN
        EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', t.relid::regclass, r.trigger_name);
        v_result := 'installed';
    END IF;
    UPDATE outbox.capture_rules
    SET definition_hash = md5(v_c.source || v_c.trigger_sql)
    WHERE id = p_rule_id AND definition_hash IS DISTINCT FROM md5(v_c.source || v_c.trigger_sql);
    PERFORM set_config('outbox.capture_internal', coalesce(v_internal, ''), true);
    RETURN v_result;
END
$$;

-- Remove a rule's trigger and function and its row.
CREATE FUNCTION outbox.track_remove(p_rule_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    r outbox.capture_rules;
    t outbox.capture_tables;
    v_tg record;
    v_internal text := current_setting('outbox.capture_internal', true);
BEGIN
    SELECT * INTO r FROM outbox.capture_rules WHERE id = p_rule_id;
    SELECT * INTO t FROM outbox.capture_tables WHERE id = r.table_id;
    PERFORM set_config('outbox.capture_internal', 'on', true);
    IF t.relid IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = t.relid) THEN
        SELECT * INTO v_tg FROM outbox.track_trigger(p_rule_id);
        IF v_tg.oid IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER %I ON %s', v_tg.name, t.relid::regclass);
        END IF;
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS outbox.%I()', r.function_name);
    DELETE FROM outbox.capture_rules WHERE id = p_rule_id;
    IF NOT EXISTS (SELECT 1 FROM outbox.capture_rules WHERE table_id = t.id) THEN
        DELETE FROM outbox.capture_tables WHERE id = t.id;
    END IF;
    PERFORM set_config('outbox.capture_internal', coalesce(v_internal, ''), true);
END
$$;

-- Rewrite NEW.old / OLD.old (quoted or not) to the new name in a --when.
CREATE FUNCTION outbox.track_rename_in(p_sql text, p_old text, p_new text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT regexp_replace(
        p_sql,
        '(\m(?:new|old)\s*\.\s*)(?:' || regexp_replace(format('%I', p_old), '([^A-Za-z0-9_])', '\\\1', 'g')
            || CASE WHEN format('%I', p_old) = p_old
                    THEN '|"' || regexp_replace(p_old, '([^A-Za-z0-9_])', '\\\1', 'g') || '"'
                    ELSE '' END
            || ')(?![A-Za-z0-9_$"])',
        '\1' || replace(format('%I', p_new), '\', '\\'),
        'gi')
$$;

-- Bring a tracked table's rules up to date with the table as it is now:
-- follow renames of the table and its columns, drop columns from the
-- policy, refuse (OB002) what would leak an excluded column or end a rule,
-- regenerate every rule (unless p_install is false: outbox track installs
-- them itself, to report each). Returns the outbox.schema_changed payload,
-- or NULL when nothing about the table changed.
CREATE FUNCTION outbox.track_sync(
    p_table_id bigint, p_command text, p_install boolean DEFAULT true
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    t outbox.capture_tables;
    r outbox.capture_rules;
    v_schema text;
    v_name text;
    v_now jsonb;
    v_changes jsonb := '[]';
    v_renamed jsonb := '{}';   -- {attnum: [old, new]}
    v_dropped smallint[] := '{}';
    v_dropped_names text[] := '{}';
    v_retyped text[] := '{}';
    v_col jsonb;
    v_old jsonb;
    v_keep smallint[];
    v_retired text[];
    v_rules jsonb := '[]';
    v_action text := 'unchanged';
    v_result text;
    v_when text;
    v_label text;
    k text;
BEGIN
    SELECT * INTO t FROM outbox.capture_tables WHERE id = p_table_id FOR UPDATE;
    SELECT n.nspname, c.relname INTO v_schema, v_name
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = t.relid;
    IF (v_schema, v_name) IS DISTINCT FROM (t.table_schema, t.table_name) THEN
        v_changes := v_changes || jsonb_build_object(
            'change', 'table renamed', 'from', format('%s.%s', t.table_schema, t.table_name),
            'to', format('%s.%s', v_schema, v_name));
        UPDATE outbox.capture_tables SET
            previous_names = array_remove(previous_names, format('%s.%s', v_schema, v_name))
                             || format('%s.%s', t.table_schema, t.table_name),
            table_schema = v_schema, table_name = v_name, updated_at = now()
        WHERE id = t.id;
        UPDATE outbox.capture_rules SET table_schema = v_schema, table_name = v_name
        WHERE table_id = t.id;
        v_action := 'followed';
    END IF;
    v_now := outbox.track_columns(t.relid);
    FOR v_old IN SELECT * FROM jsonb_array_elements(t.columns_seen) LOOP
        SELECT c INTO v_col FROM jsonb_array_elements(v_now) c
        WHERE (c ->> 'attnum')::int = (v_old ->> 'attnum')::int;
        IF v_col IS NULL THEN
            v_dropped := v_dropped || (v_old ->> 'attnum')::smallint;
            v_dropped_names := v_dropped_names || (v_old ->> 'name');
            v_changes := v_changes || jsonb_build_object('change', 'column dropped',
                                                         'column', v_old ->> 'name');
        ELSE
            IF v_col ->> 'name' <> v_old ->> 'name' THEN
                v_renamed := v_renamed || jsonb_build_object(v_old ->> 'attnum',
                    jsonb_build_array(v_old ->> 'name', v_col ->> 'name'));
                v_changes := v_changes || jsonb_build_object('change', 'column renamed',
                    'from', v_old ->> 'name', 'to', v_col ->> 'name');
            END IF;
            IF v_col ->> 'type' <> v_old ->> 'type' THEN
                v_retyped := v_retyped || (v_col ->> 'name');
                v_changes := v_changes || jsonb_build_object('change', 'column type changed',
                    'column', v_col ->> 'name', 'from', v_old ->> 'type', 'to', v_col ->> 'type');
            END IF;
        END IF;
    END LOOP;
    -- The policy: a dropped column leaves it (an excluded one is retired by
    -- name); a --columns policy must keep one.
    v_keep := ARRAY(SELECT a FROM unnest(t.policy_attnums) WITH ORDINALITY u(a, o)
                    WHERE NOT a = ANY (v_dropped) ORDER BY o);
    IF t.policy = 'columns' AND cardinality(v_keep) = 0 THEN
        RAISE EXCEPTION 'outbox: % on %.% refused: it drops the last column of the table''s '
            'capture policy (--columns %), which would leave its rules with no payload',
            p_command, t.table_schema, t.table_name, array_to_string(t.policy_columns, ',')
            USING ERRCODE = 'OB002',
                  HINT = 'change the policy first: outbox track TABLE --columns COL,... '
                         '(or --all-columns), then drop the column';
    END IF;
    v_retired := t.retired_exclusions;
    IF t.policy = 'exclude' THEN
        v_retired := v_retired || ARRAY(
            SELECT x FROM unnest(t.policy_attnums, t.policy_columns) u(a, x)
            WHERE a = ANY (v_dropped) AND NOT x = ANY (v_retired));
    END IF;
    FOR v_col IN SELECT * FROM jsonb_array_elements(v_now) LOOP
        IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(t.columns_seen) o
                       WHERE (o ->> 'attnum')::int = (v_col ->> 'attnum')::int) THEN
            IF t.policy = 'exclude' AND (v_col ->> 'name') = ANY (v_retired) THEN
                v_keep := v_keep || (v_col ->> 'attnum')::smallint;
                v_retired := array_remove(v_retired, v_col ->> 'name');
                v_action := 'regenerated';
            END IF;
            v_changes := v_changes || jsonb_build_object('change', 'column added',
                'column', v_col ->> 'name', 'included',
                CASE t.policy WHEN 'columns' THEN false
                              WHEN 'exclude' THEN NOT (v_col ->> 'attnum')::smallint = ANY (v_keep)
                              ELSE true END);
        END IF;
    END LOOP;
    UPDATE outbox.capture_tables SET
        policy_attnums = v_keep,
        retired_exclusions = v_retired,
        policy = CASE WHEN cardinality(v_keep) = 0 AND cardinality(v_retired) = 0
                      THEN 'all' ELSE policy END,
        policy_columns = coalesce(ARRAY(SELECT outbox.track_attname(relid, a)
                                        FROM unnest(v_keep) WITH ORDINALITY u(a, o)
                                        ORDER BY o), '{}'),
        columns_seen = v_now, updated_at = now()
    WHERE id = t.id;

    FOR r IN SELECT * FROM outbox.capture_rules WHERE table_id = t.id ORDER BY id LOOP
        v_label := outbox.track_label(r.id);
        IF r.of_attnums && v_dropped THEN
            RAISE EXCEPTION 'outbox: % on %.% refused: it drops column % that capture rule % '
                'watches (--of %); the rule would never fire again',
                p_command, t.table_schema, t.table_name,
                (SELECT string_agg(x, ',') FROM unnest(v_dropped_names) x
                 WHERE x = ANY (r.of_columns)), v_label, array_to_string(r.of_columns, ',')
                USING ERRCODE = 'OB002',
                      HINT = format('remove the rule first (outbox untrack %s.%s %s), then drop '
                                    'the column', t.table_schema, t.table_name, r.event_type);
        END IF;
        IF r.key_attnums && v_dropped THEN
            RAISE EXCEPTION 'outbox: % on %.% refused: it drops column % that is the key of '
                'capture rule % (--key %); its events would lose their key and their order',
                p_command, t.table_schema, t.table_name,
                (SELECT string_agg(x, ',') FROM unnest(v_dropped_names) x
                 WHERE x = ANY (r.key_columns)), v_label, array_to_string(r.key_columns, ',')
                USING ERRCODE = 'OB002',
                      HINT = format('re-track the rule with another --key (or untrack it: outbox '
                                    'untrack %s.%s %s) first', t.table_schema, t.table_name,
                                    r.event_type);
        END IF;
        v_when := r.when_sql;
        IF v_when IS NOT NULL THEN
            FOR k IN SELECT jsonb_object_keys(v_renamed) LOOP
                v_when := outbox.track_rename_in(v_when, v_renamed -> k ->> 0, v_renamed -> k ->> 1);
            END LOOP;
        END IF;
        UPDATE outbox.capture_rules SET
            when_sql = v_when,
            of_columns = coalesce(ARRAY(SELECT outbox.track_attname(t.relid, a)
                                        FROM unnest(of_attnums) WITH ORDINALITY u(a, o)
                                        ORDER BY o), '{}'),
            key_columns = coalesce(ARRAY(SELECT outbox.track_attname(t.relid, a)
                                         FROM unnest(key_attnums) WITH ORDINALITY u(a, o)
                                         ORDER BY o), '{}')
        WHERE id = r.id;
        BEGIN
            v_result := CASE WHEN p_install THEN outbox.track_install(r.id) ELSE 'unchanged' END;
        EXCEPTION WHEN SQLSTATE 'OB001' THEN
            RAISE EXCEPTION 'outbox: % on %.% refused: capture rule % would break: %',
                p_command, t.table_schema, t.table_name, v_label, SQLERRM
                USING ERRCODE = 'OB002',
                      HINT = format('change or remove the rule first (outbox untrack %s.%s %s); '
                                    'functions in --when must be schema-qualified',
                                    t.table_schema, t.table_name, r.event_type);
        END;
        IF v_result <> 'unchanged' THEN
            v_action := 'regenerated';
        END IF;
        v_rules := v_rules || to_jsonb(format('%s -> %s', r.operation, r.event_type));
    END LOOP;
    IF jsonb_array_length(v_changes) = 0 AND v_action = 'unchanged' THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('table', format('%s.%s', v_schema, v_name), 'command', p_command,
                              'rules', v_rules, 'action', v_action, 'changes', v_changes);
END
$$;

-- Attach a detached table's rules to the table p_relid (it took one of
-- their names). Returns the schema_changed payload, or NULL when a column a
-- rule needs is missing (the rules stay detached, reported as such).
CREATE FUNCTION outbox.track_attach(p_table_id bigint, p_relid oid, p_command text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    t outbox.capture_tables;
    r outbox.capture_rules;
    v_schema text;
    v_name text;
    v_attnums smallint[];
    v_missing text[] := '{}';
    v_rules jsonb := '[]';
    v_from text;
BEGIN
    SELECT * INTO t FROM outbox.capture_tables WHERE id = p_table_id FOR UPDATE;
    SELECT n.nspname, c.relname INTO v_schema, v_name
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = p_relid;
    v_from := format('%s.%s', t.table_schema, t.table_name);
    -- Columns are matched by name on the new table.
    v_missing := ARRAY(
        SELECT DISTINCT x FROM (
            SELECT unnest(CASE WHEN t.policy = 'columns' THEN t.policy_columns END) x
            UNION ALL SELECT unnest(of_columns) FROM outbox.capture_rules WHERE table_id = t.id
            UNION ALL SELECT unnest(key_columns) FROM outbox.capture_rules WHERE table_id = t.id
        ) s
        WHERE x IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = p_relid AND a.attname = x AND NOT a.attisdropped));
    IF cardinality(v_missing) > 0 THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(a.attnum ORDER BY u.o), '{}') INTO v_attnums
    FROM unnest(t.policy_columns || CASE WHEN t.policy = 'exclude' THEN t.retired_exclusions
                                         ELSE '{}' END) WITH ORDINALITY u(x, o)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = p_relid AND a.attname = u.x
                                  AND NOT a.attisdropped;
    UPDATE outbox.capture_tables SET
        relid = p_relid, table_schema = v_schema, table_name = v_name,
        previous_names = array_remove(array_remove(previous_names, v_from),
                                      format('%s.%s', v_schema, v_name))
                         || CASE WHEN v_from <> format('%s.%s', v_schema, v_name)
                                 THEN ARRAY[v_from] ELSE '{}' END,
        policy_attnums = v_attnums,
        policy_columns = coalesce(ARRAY(SELECT outbox.track_attname(p_relid, a)
                                        FROM unnest(v_attnums) WITH ORDINALITY u(a, o)
                                        ORDER BY o), '{}'),
        retired_exclusions = CASE WHEN t.policy = 'exclude' THEN ARRAY(
            SELECT x FROM unnest(t.policy_columns || t.retired_exclusions) x
            WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = p_relid AND a.attname = x
                                AND NOT a.attisdropped)) ELSE '{}' END,
        policy = CASE WHEN cardinality(v_attnums) = 0 AND t.policy <> 'exclude'
                      THEN 'all' ELSE policy END,
        columns_seen = outbox.track_columns(p_relid), updated_at = now()
    WHERE id = t.id;
    UPDATE outbox.capture_rules r2 SET
        table_schema = v_schema, table_name = v_name,
        of_attnums = coalesce((SELECT array_agg(a.attnum ORDER BY u.o)
            FROM unnest(r2.of_columns) WITH ORDINALITY u(x, o)
            JOIN pg_catalog.pg_attribute a ON a.attrelid = p_relid AND a.attname = u.x
                                          AND NOT a.attisdropped), '{}'),
        key_attnums = coalesce((SELECT array_agg(a.attnum ORDER BY u.o)
            FROM unnest(r2.key_columns) WITH ORDINALITY u(x, o)
            JOIN pg_catalog.pg_attribute a ON a.attrelid = p_relid AND a.attname = u.x
                                          AND NOT a.attisdropped), '{}')
    WHERE r2.table_id = t.id;
    FOR r IN SELECT * FROM outbox.capture_rules WHERE table_id = t.id ORDER BY id LOOP
        BEGIN
            PERFORM outbox.track_install(r.id);
        EXCEPTION WHEN SQLSTATE 'OB001' THEN
            RAISE EXCEPTION 'outbox: % on %.%: capture rule % cannot be moved to this table: %',
                p_command, v_schema, v_name, outbox.track_label(r.id), SQLERRM
                USING ERRCODE = 'OB002',
                      HINT = format('outbox untrack %s %s first', v_from, r.event_type);
        END;
        v_rules := v_rules || to_jsonb(format('%s -> %s', r.operation, r.event_type));
    END LOOP;
    RETURN jsonb_build_object('table', format('%s.%s', v_schema, v_name), 'command', p_command,
                              'rules', v_rules, 'action', 'attached',
                              'changes', jsonb_build_array(jsonb_build_object(
                                  'change', 'rules attached', 'from', v_from)));
END
$$;

-- A detached table whose name (current or previous) the table p_relid has.
CREATE FUNCTION outbox.track_waiting_for(p_relid oid) RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT t.id
    FROM outbox.capture_tables t, pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = p_relid AND c.relkind IN ('r', 'p') AND n.nspname <> 'outbox'
      AND NOT EXISTS (SELECT 1 FROM outbox.capture_tables x WHERE x.relid = p_relid)
      AND (t.relid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = t.relid))
      AND (format('%s.%s', n.nspname, c.relname) = format('%s.%s', t.table_schema, t.table_name)
           OR format('%s.%s', n.nspname, c.relname) = ANY (t.previous_names))
    ORDER BY t.updated_at DESC, t.id
    LIMIT 1
$$;

-- An array, last element first (previous_names: most recent first).
CREATE FUNCTION outbox.track_reversed(p text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE
AS $$ SELECT coalesce(array_agg(x ORDER BY o DESC), '{}') FROM unnest(p) WITH ORDINALITY u(x, o) $$;

CREATE FUNCTION outbox.track_publish_change(p_payload jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF p_payload IS NOT NULL THEN
        PERFORM outbox.publish('outbox.schema_changed', p_payload);
    END IF;
END
$$;

-- The DDL event trigger, end of command: re-check every tracked table the
-- command touched; attach waiting rules to a table that took their name.
CREATE FUNCTION outbox.track_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_internal text := current_setting('outbox.capture_internal', true);
    v_relid oid;
    v_table_id bigint;
    v_tag text;
BEGIN
    IF v_internal = 'on' THEN
        RETURN;
    END IF;
    FOR v_relid, v_tag IN
        SELECT DISTINCT d.objid, d.command_tag FROM pg_event_trigger_ddl_commands() d
        WHERE d.classid = 'pg_catalog.pg_class'::regclass
           OR d.classid = 'pg_catalog.pg_trigger'::regclass
    LOOP
        IF v_tag IN ('ALTER TRIGGER', 'CREATE TRIGGER') THEN
            SELECT tgrelid INTO v_relid FROM pg_catalog.pg_trigger WHERE oid = v_relid;
        END IF;
        BEGIN
            SELECT id INTO v_table_id FROM outbox.capture_tables WHERE relid = v_relid;
            IF v_table_id IS NOT NULL THEN
                PERFORM outbox.track_publish_change(outbox.track_sync(v_table_id, v_tag));
            ELSIF v_tag IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO') THEN
                v_table_id := outbox.track_waiting_for(v_relid);
                IF v_table_id IS NOT NULL THEN
                    PERFORM outbox.track_publish_change(
                        outbox.track_attach(v_table_id, v_relid, v_tag));
                END IF;
            END IF;
        EXCEPTION
            WHEN SQLSTATE 'OB002' THEN
                RAISE;
            WHEN OTHERS THEN
                -- A fault of ours must not block the database's DDL: say it,
                -- and let verification (outbox tracked, /health) show the rule.
                RAISE WARNING 'outbox: could not re-check the capture rules after %: %',
                    v_tag, SQLERRM
                    USING HINT = 'run outbox tracked; outbox track restores a stale rule';
        END;
    END LOOP;
END
$$;

-- The DDL event trigger, objects dropped: a tracked table dropped hands its
-- rules to a successor that already took one of its names (the
-- rename-copy-drop dance), else they wait detached; a capture trigger or
-- function dropped on its own (not with its table, not by outbox) is
-- refused, since the rule would stop silently.
CREATE FUNCTION outbox.track_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_internal text := current_setting('outbox.capture_internal', true);
    d record;
    t outbox.capture_tables;
    r outbox.capture_rules;
    v_successor oid;
    v_payload jsonb;
    v_name text;
    v_tag text := tg_tag;
    v_columns text;
BEGIN
    IF v_internal = 'on' THEN
        RETURN;
    END IF;
    -- Triggers and functions of rules, dropped without their table.
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF d.object_type = 'trigger' THEN
            SELECT ru.* INTO r FROM outbox.capture_rules ru
            JOIN outbox.capture_tables ta ON ta.id = ru.table_id
            WHERE ta.table_schema = d.address_names[1] AND ta.table_name = d.address_names[2]
              AND ru.trigger_name = d.address_names[3];
            IF r.id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM pg_event_trigger_dropped_objects() x
                WHERE x.object_type = 'table' AND x.address_names = d.address_names[1:2]) THEN
                SELECT string_agg(x.address_names[3], ',') INTO v_columns
                FROM pg_event_trigger_dropped_objects() x WHERE x.object_type = 'table column';
                RAISE EXCEPTION 'outbox: % refused: it drops the trigger of capture rule %',
                    v_tag, outbox.track_label(r.id)
                    || CASE WHEN v_columns IS NOT NULL
                            THEN format(' (with column %s, which the rule needs)', v_columns)
                            ELSE '' END
                    USING ERRCODE = 'OB002',
                          HINT = format('remove the rule first: outbox untrack %s.%s %s',
                                        d.address_names[1], d.address_names[2], r.event_type);
            END IF;
        ELSIF d.object_type = 'function' AND d.schema_name = 'outbox' THEN
            SELECT * INTO r FROM outbox.capture_rules WHERE function_name = d.address_names[2];
            IF r.id IS NOT NULL THEN
                RAISE EXCEPTION 'outbox: % refused: it drops the function of capture rule %',
                    v_tag, outbox.track_label(r.id)
                    USING ERRCODE = 'OB002',
                          HINT = 'remove the rule with outbox untrack instead';
            END IF;
        END IF;
    END LOOP;
    -- Tracked tables dropped.
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' LOOP
        SELECT * INTO t FROM outbox.capture_tables WHERE relid = d.objid;
        CONTINUE WHEN t.id IS NULL;
        v_successor := NULL;
        FOREACH v_name IN ARRAY outbox.track_reversed(t.previous_names) LOOP
            v_successor := to_regclass(format('%I.%I', split_part(v_name, '.', 1),
                                              substr(v_name, length(split_part(v_name, '.', 1)) + 2)));
            EXIT WHEN v_successor IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM outbox.capture_tables WHERE relid = v_successor);
            v_successor := NULL;
        END LOOP;
        UPDATE outbox.capture_tables SET relid = NULL, updated_at = now() WHERE id = t.id;
        v_payload := NULL;
        IF v_successor IS NOT NULL THEN
            BEGIN
                v_payload := outbox.track_attach(t.id, v_successor, v_tag);
            EXCEPTION
                WHEN SQLSTATE 'OB002' THEN
                    RAISE;
                WHEN OTHERS THEN
                    RAISE WARNING 'outbox: could not move the capture rules of %.% to %: %',
                        t.table_schema, t.table_name, v_successor::regclass, SQLERRM;
            END;
        END IF;
        IF v_payload IS NULL THEN
            v_payload := jsonb_build_object(
                'table', format('%s.%s', t.table_schema, t.table_name), 'command', v_tag,
                'rules', (SELECT coalesce(jsonb_agg(format('%s -> %s', operation, event_type)
                                                    ORDER BY id), '[]')
                          FROM outbox.capture_rules WHERE table_id = t.id),
                'action', 'detached',
                'changes', jsonb_build_array(jsonb_build_object(
                    'change', 'table dropped',
                    'waiting_for', to_jsonb(format('%s.%s', t.table_schema, t.table_name)
                                            || t.previous_names))));
        END IF;
        PERFORM outbox.track_publish_change(v_payload);
    END LOOP;
END
$$;

-- Every rule and its state, for `outbox tracked`, /health and /metrics.
CREATE FUNCTION outbox.track_check()
RETURNS TABLE (rule_id bigint, table_schema text, table_name text, operation text,
               event_type text, state text, detail text)
LANGUAGE sql STABLE
AS $$
    SELECT r.id, t.table_schema, t.table_name, r.operation, r.event_type, s.state, s.detail
    FROM outbox.capture_rules r
    JOIN outbox.capture_tables t ON t.id = r.table_id
    CROSS JOIN LATERAL outbox.track_state(r.id) s
    ORDER BY t.table_schema, t.table_name, r.operation, r.event_type
$$;

-- Install the DDL event triggers if this role may (a superuser, or on
-- managed Postgres the provider's admin role); true when they are in place.
-- outbox migrate calls it after the migrations and says so in one line when
-- it cannot.
CREATE FUNCTION outbox.track_install_ddl_guard() RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'outbox_capture_ddl_end')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger
                   WHERE evtname = 'outbox_capture_sql_drop') THEN
        RETURN true;
    END IF;
    BEGIN
        -- The event trigger functions run as their owner (SECURITY DEFINER):
        -- the role that installs the triggers.
        ALTER FUNCTION outbox.track_ddl_end() OWNER TO CURRENT_USER;
        ALTER FUNCTION outbox.track_sql_drop() OWNER TO CURRENT_USER;
        DROP EVENT TRIGGER IF EXISTS outbox_capture_ddl_end;
        DROP EVENT TRIGGER IF EXISTS outbox_capture_sql_drop;
        CREATE EVENT TRIGGER outbox_capture_ddl_end ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                         'ALTER TRIGGER')
            EXECUTE FUNCTION outbox.track_ddl_end();
        CREATE EVENT TRIGGER outbox_capture_sql_drop ON sql_drop
            EXECUTE FUNCTION outbox.track_sql_drop();
    EXCEPTION WHEN insufficient_privilege THEN
        RETURN false;
    END;
    RETURN true;
END
$$;

-- Regenerate every existing rule with this compiler (and its key/trace
-- columns from 005), under the names the rules already have.
SELECT set_config('outbox.capture_internal', 'on', true);
UPDATE outbox.capture_tables SET columns_seen = outbox.track_columns(relid)
WHERE relid IS NOT NULL;
SELECT outbox.track_install(id) FROM outbox.capture_rules
WHERE table_id IN (SELECT id FROM outbox.capture_tables WHERE relid IS NOT NULL)
ORDER BY id;
SELECT set_config('outbox.capture_internal', '', true);
SELECT outbox.track_install_ddl_guard();
