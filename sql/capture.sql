-- Named statements of outbox/capture.py. The rule
-- compiler itself is in the database (sql/010_capture_identity.sql:
-- outbox.track_compile / capture_install / capture_sync), shared with the
-- DDL event trigger; these statements only find tables, store rules and
-- call it. Each block starts with "-- name: NAME".

-- name: capture_lock
-- One `outbox track`/`untrack` at a time: they read, then write, the rule rows.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: capture_internal
-- Our own DDL is not a schema change for the DDL event trigger to react to
-- (capture_install sets this itself; untrack and policy changes too).
SELECT set_config('outbox.capture_internal', 'on', true)

-- name: table_lookup
-- The table as to_regclass resolves the user's name (search_path applies).
SELECT c.oid AS relid, n.nspname AS schema, c.relname AS name, c.relkind AS kind
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%(name)s)

-- name: table_columns
SELECT attnum, attname::text AS name
FROM pg_attribute
WHERE attrelid = %(relid)s AND attnum > 0 AND NOT attisdropped
ORDER BY attnum

-- name: capture_table_by_relid
SELECT id, policy, policy_columns || retired_exclusions AS policy_columns
FROM outbox.capture_tables WHERE relid = %(relid)s

-- name: capture_table_by_name
-- A tracked table by the name it has (or had: a dropped table's rules wait
-- under their names), for untrack of a table that is gone.
SELECT id, table_schema, table_name
FROM outbox.capture_tables
WHERE (table_schema = %(schema)s AND table_name = %(name)s)
   OR format('%%s.%%s', %(schema)s::text, %(name)s::text) = ANY (previous_names)
ORDER BY (table_schema = %(schema)s AND table_name = %(name)s) DESC, updated_at DESC
LIMIT 1

-- name: capture_table_waiting
-- Rules of a dropped table waiting for a table of one of its names.
SELECT outbox.track_waiting_for(%(relid)s)

-- name: capture_table_attach
SELECT outbox.track_attach(%(id)s, %(relid)s, 'outbox track')

-- name: capture_table_insert
INSERT INTO outbox.capture_tables (relid, table_schema, table_name, columns_seen)
VALUES (%(relid)s, %(schema)s, %(name)s, outbox.track_columns(%(relid)s))
RETURNING id

-- name: capture_table_sync
-- Catch up with what changed while no DDL event trigger watched (renames,
-- dropped columns); refuses (OB002) like the event trigger would. The
-- rules are installed by the caller, one by one.
SELECT outbox.track_sync(%(id)s, 'outbox track', false)

-- name: capture_table_set_policy
-- policy_columns are the names now; the attnums are what follows renames.
UPDATE outbox.capture_tables SET
    policy = %(policy)s,
    policy_attnums = %(attnums)s::smallint[],
    policy_columns = %(columns)s::text[],
    retired_exclusions = '{}',
    updated_at = now()
WHERE id = %(id)s

-- name: capture_table_rules
SELECT id, operation, event_type, key_columns FROM outbox.capture_rules
WHERE table_id = %(id)s ORDER BY id

-- name: rule_get
SELECT id FROM outbox.capture_rules
WHERE table_id = %(table_id)s AND operation = %(operation)s AND event_type = %(event_type)s

-- name: rule_upsert
-- definition_hash is capture_install's (md5 of what it compiled); a new or
-- changed rule starts with none, so its trigger is (re)created.
INSERT INTO outbox.capture_rules
    (table_id, table_schema, table_name, operation, event_type, level, of_columns, of_attnums,
     key_columns, key_attnums, when_sql, trigger_name, function_name, definition_hash)
VALUES (%(table_id)s, %(schema)s, %(name)s, %(operation)s, %(event_type)s, %(level)s,
        %(of_columns)s, %(of_attnums)s::smallint[], %(key_columns)s, %(key_attnums)s::smallint[],
        %(when_sql)s, %(trigger_name)s, %(function_name)s, '')
ON CONFLICT ON CONSTRAINT capture_rules_table_op_event_key DO UPDATE SET
    level = EXCLUDED.level,
    of_columns = EXCLUDED.of_columns, of_attnums = EXCLUDED.of_attnums,
    key_columns = EXCLUDED.key_columns, key_attnums = EXCLUDED.key_attnums,
    when_sql = EXCLUDED.when_sql,
    definition_hash = CASE
        WHEN (capture_rules.level, capture_rules.of_attnums, capture_rules.key_attnums,
              capture_rules.when_sql)
             IS NOT DISTINCT FROM (EXCLUDED.level, EXCLUDED.of_attnums, EXCLUDED.key_attnums,
                                   EXCLUDED.when_sql)
        THEN capture_rules.definition_hash ELSE '' END
RETURNING id, trigger_name, function_name

-- name: rule_install
-- enable: `outbox track` of this very rule also re-enables its trigger.
SELECT outbox.track_install(%(id)s, %(enable)s)

-- name: rule_remove
SELECT outbox.track_remove(%(id)s)

-- name: rules_of_table
SELECT id, operation, event_type, trigger_name, function_name
FROM outbox.capture_rules
WHERE table_id = %(table_id)s AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s)
ORDER BY id

-- name: rules_list
-- Every rule with its table's policy and its verified state (capture_check).
-- A dropped excluded column stays in the list (it is excluded again if a
-- column of that name comes back).
SELECT t.table_schema, t.table_name, r.operation, r.event_type, r.of_columns, r.when_sql,
       t.policy, t.policy_columns || t.retired_exclusions AS policy_columns, r.key_columns, r.trigger_name, r.function_name, r.level,
       s.state, s.detail
FROM outbox.capture_rules r
JOIN outbox.capture_tables t ON t.id = r.table_id
CROSS JOIN LATERAL outbox.track_state(r.id) s
ORDER BY t.table_schema, t.table_name, r.operation, r.event_type

-- name: rules_check
-- The rules whose trigger is not what they compile to (outbox serve, /health).
SELECT table_schema, table_name, operation, event_type, state, detail
FROM outbox.track_check()

-- name: ddl_guard_installed
SELECT count(*) = 2 AS installed
FROM pg_event_trigger
WHERE evtname IN ('outbox_capture_ddl_end', 'outbox_capture_sql_drop') AND evtenabled <> 'D'

-- name: ddl_guard_install
SELECT outbox.track_install_ddl_guard()

-- name: capture_reanchor
-- After a dump and restore: tables whose oid no longer carries their rules'
-- triggers move to the table that does (sql/011).
SELECT outbox.track_reanchor()
