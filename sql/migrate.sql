-- outbox migrate (outbox/migrate.py): the statements around the numbered
-- migrations NNN_name.sql. All of them run in one transaction.

-- name: migrate_lock
-- Transaction-scoped: two processes migrating at once serialize here, and the
-- second one then sees the first one's versions and applies nothing. The lock
-- goes with the commit or the rollback.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: migrate_schema
CREATE SCHEMA IF NOT EXISTS outbox

-- name: migrate_versions_table
-- The checksum is sha256 of the migration file as applied: a file edited
-- afterwards is reported, never re-applied.
CREATE TABLE IF NOT EXISTS outbox.schema_migrations (
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
)

-- name: migrate_applied
SELECT version, checksum FROM outbox.schema_migrations ORDER BY version

-- name: migrate_record
INSERT INTO outbox.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s)

-- name: migrate_has_versions
-- to_regclass, not a query of the table: a database never migrated has none.
SELECT to_regclass('outbox.schema_migrations') IS NOT NULL AS present

-- name: migrate_current_version
SELECT coalesce(max(version), 0) AS version FROM outbox.schema_migrations
