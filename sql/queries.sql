-- Named queries used by the relay. Each block starts with "-- name: NAME".

-- name: feed_snapshot
-- The reader's snapshot; the transaction is REPEATABLE READ, so every query
-- after this one sees exactly the same set of committed transactions.
SELECT pg_current_snapshot()::text;

-- name: feed_page
-- Rows above the cursor, by id (primary-key range scan).
SELECT id, xid::text, event_type, payload::text, created_at
FROM outbox.events
WHERE id > %(after)s
ORDER BY id
LIMIT %(limit)s;

-- name: feed_late
-- Rows at or below the cursor written by transactions that were still in
-- progress at the previous read and have committed since (xid index).
SELECT id, xid::text, event_type, payload::text, created_at
FROM outbox.events
WHERE xid = ANY(%(pending)s::text[]::xid8[]) AND id <= %(after)s
ORDER BY id;

-- name: feed_continuing
-- Which transactions of a full page have visible rows beyond it: the page is
-- cut before them so that one transaction's events come out together.
SELECT DISTINCT xid::text
FROM outbox.events
WHERE xid = ANY(%(xids)s::text[]::xid8[]) AND id > %(page_max)s;

-- name: feed_head
-- The cursor of "now": the largest visible id, and every transaction that
-- is still in progress (any of them may own an id below it).
SELECT pg_current_snapshot()::text, coalesce((SELECT max(id) FROM outbox.events), 0);
