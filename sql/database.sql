-- Creating the database the demo runs in (cli/demo.py for a reachable
-- server, cli/embedded.py for the private cluster), on a connection to the
-- server's "postgres" database. What `outbox demo` creates is marked with a
-- comment, so `outbox demo --reset` removes exactly that and nothing of yours
-- (cli/demo_db.py).

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(dbname)s) AS present

-- name: create_database
-- A template: {dbname} is composed with psycopg.sql.Identifier (CREATE
-- DATABASE takes no parameters, and cannot run inside a transaction: the
-- connection is in autocommit).
CREATE DATABASE {dbname}

-- name: mark_database
-- A template: {dbname} an Identifier, {mark} a Literal (COMMENT takes no parameters).
COMMENT ON DATABASE {dbname} IS {mark}

-- name: database_comment
SELECT shobj_description(oid, 'pg_database') AS comment
FROM pg_database
WHERE datname = %(dbname)s

-- name: drop_database
-- A template: {dbname} an Identifier. FORCE ends the demo's own sessions.
DROP DATABASE {dbname} WITH (FORCE)

-- name: schema_exists
SELECT to_regnamespace(%(schema)s) IS NOT NULL AS present

-- name: schema_comment
SELECT obj_description(to_regnamespace(%(schema)s), 'pg_namespace') AS comment

-- name: mark_outbox_schema
-- A template: {mark} a Literal.
COMMENT ON SCHEMA outbox IS {mark}

-- name: delete_demo_webhooks
DELETE FROM outbox.webhooks WHERE name = ANY(%(names)s)

-- name: capture_rule_count
SELECT count(*) AS rules FROM outbox.capture_rules

-- name: drop_demo_schema
DROP SCHEMA demo CASCADE

-- name: drop_outbox_schema
DROP SCHEMA outbox CASCADE
