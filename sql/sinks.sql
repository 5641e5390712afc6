-- Sinks: the table behind /sinks and `outbox sink`, and the publisher's
-- bookkeeping (relay/sinks/). The schema is sql/006_sinks.sql.

-- name: sink_get
-- Every column the API and the CLI show (the url is masked by the caller);
-- sink_list returns the same.
SELECT id, name, kind, url, event_types, subject, stream, exchange, routing_key, description,
       is_active, cursor, published_count, publish_rate, last_published_at, last_error,
       last_error_at, owner, owner_seen_at, created_at, updated_at
FROM outbox.sinks
WHERE id = %(id)s

-- name: sink_list
SELECT id, name, kind, url, event_types, subject, stream, exchange, routing_key, description,
       is_active, cursor, published_count, publish_rate, last_published_at, last_error,
       last_error_at, owner, owner_seen_at, created_at, updated_at
FROM outbox.sinks
ORDER BY id
LIMIT %(limit)s OFFSET %(offset)s

-- name: sink_insert
INSERT INTO outbox.sinks
    (name, kind, url, event_types, subject, stream, exchange, routing_key, description,
     is_active, cursor)
VALUES
    (%(name)s, %(kind)s, %(url)s, %(event_types)s, %(subject)s, %(stream)s, %(exchange)s,
     %(routing_key)s, %(description)s, %(is_active)s, %(cursor)s)
RETURNING id

-- name: sink_update
-- PATCH: a NULL parameter leaves the column as it is (description only when
-- given). updated_at tells the publishers' supervisors to restart the sink's
-- publisher with the new settings; a new cursor (``since``) makes the
-- running publisher's next compare-and-set fail, so it stops at once.
UPDATE outbox.sinks SET
    name = coalesce(%(name)s::text, name),
    url = coalesce(%(url)s::text, url),
    event_types = coalesce(%(event_types)s::text[], event_types),
    subject = coalesce(%(subject)s::text, subject),
    stream = CASE WHEN %(set_stream)s::boolean THEN %(stream)s::text ELSE stream END,
    exchange = coalesce(%(exchange)s::text, exchange),
    routing_key = coalesce(%(routing_key)s::text, routing_key),
    description = CASE WHEN %(set_description)s::boolean
                       THEN %(description)s::text ELSE description END,
    is_active = coalesce(%(is_active)s::boolean, is_active),
    cursor = coalesce(%(cursor)s::text, cursor),
    updated_at = now()
WHERE id = %(id)s

-- name: sink_delete
DELETE FROM outbox.sinks WHERE id = %(id)s

-- name: sink_delete_by_name
DELETE FROM outbox.sinks WHERE name = %(name)s

-- name: sink_count
SELECT count(*) FROM outbox.sinks

-- name: sink_cursors
-- Retention keeps what any sink, active or paused, has not published yet
-- (relay/retention.py).
SELECT cursor FROM outbox.sinks

-- name: sink_claimable
-- The supervisor's look at the table (relay/sinks/runner.py): every active
-- sink, its version (updated_at) and whether some session holds its lock
-- already, so that only a free sink costs a connection and a lock attempt.
-- The lock's second key is the id folded into int4 (see sink_try_lock).
SELECT s.id, s.updated_at, EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %(lock_class)s::integer::oid
      AND l.objid = mod(s.id, 2147483647)::integer::oid
) AS locked
FROM outbox.sinks s
WHERE s.is_active
ORDER BY s.id

-- name: sink_try_lock
-- Session level, on the publisher's own connection: held until the
-- publisher stops or its session dies (a killed process, a lost network),
-- so a dead publisher's sink is free again at once.
SELECT pg_try_advisory_lock(%(lock_class)s::integer, mod(%(id)s::bigint, 2147483647)::integer)

-- name: sink_load
-- The publisher's settings and stored cursor, read after it took the lock.
SELECT id, name, kind, url, event_types, subject, stream, exchange, routing_key, cursor,
       updated_at
FROM outbox.sinks WHERE id = %(id)s AND is_active

-- name: sink_store
-- After the broker acknowledged a batch: move the cursor from the value this
-- publisher read (compare-and-set: a PATCHed cursor or another publisher
-- makes it fail, and the publisher stops) and count what was published.
UPDATE outbox.sinks SET
    cursor = %(new)s,
    published_count = published_count + %(published)s,
    publish_rate = %(rate)s,
    last_published_at = CASE WHEN %(published)s > 0 THEN now() ELSE last_published_at END,
    last_error = NULL,
    owner = %(owner)s,
    owner_seen_at = now()
WHERE id = %(id)s AND cursor = %(old)s

-- name: sink_heartbeat
-- An idle publisher says it is alive (and its rate decays); 0 rows: the
-- cursor was moved under it.
UPDATE outbox.sinks SET owner = %(owner)s, owner_seen_at = now(), publish_rate = %(rate)s
WHERE id = %(id)s AND cursor = %(old)s

-- name: sink_error
-- The broker refused or did not answer; the publisher retries with backoff.
UPDATE outbox.sinks SET
    last_error = %(error)s, last_error_at = now(), owner = %(owner)s, owner_seen_at = now(),
    publish_rate = 0
WHERE id = %(id)s

-- name: sink_release
-- A publisher that stops in an orderly way says so.
UPDATE outbox.sinks SET owner = NULL, owner_seen_at = now(), publish_rate = 0
WHERE id = %(id)s AND owner = %(owner)s

-- name: sink_session
-- For a sink worker's own session: safe without synchronous commit. A stored
-- cursor lost in a server crash moves back to an earlier value, and the
-- events after it are published again: at least once, as promised (JetStream
-- drops the repeat by Nats-Msg-Id inside its duplicate window).
SET synchronous_commit = off
