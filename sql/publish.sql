-- Publishing from application code (outbox/publish.py), in the caller's
-- transaction. outbox.publish (the SQL function, sql/005) checks the type,
-- draws the transaction id before the event id and rings the doorbell.

-- name: publish
-- The ::text casts pick the four-argument function for NULL key/traceparent.
SELECT outbox.publish(%(event_type)s, %(payload)s, %(key)s::text, %(traceparent)s::text)
    AS event_id

-- name: publish_session
-- The same for a SQLAlchemy session, in text()'s bind style (a colon before
-- each name; no colon may appear anywhere else, comments included, which is
-- also why the casts are spelled CAST).
SELECT outbox.publish(:event_type, CAST(:payload AS jsonb), CAST(:key AS text),
                      CAST(:traceparent AS text)) AS event_id
