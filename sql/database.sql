-- Creating the database the demo runs in (cli/demo.py for a reachable
-- server, cli/embedded.py for the private cluster), on a connection to the
-- server's "postgres" database.

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(dbname)s) AS present

-- name: create_database
-- A template: {dbname} is composed with psycopg.sql.Identifier (CREATE
-- DATABASE takes no parameters, and cannot run inside a transaction: the
-- connection is in autocommit).
CREATE DATABASE {dbname}
