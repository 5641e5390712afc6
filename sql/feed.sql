-- The feed reader's statements (relay/feed.py). Each block starts with
-- "-- name: NAME". Cursor parameters come from Cursor.params(): "after" the
-- largest id emitted, "xmax" and "pending" (xids as text, cast to xid8)
-- what the previous read saw as still in progress.

-- name: feed_read
-- The whole feed read (relay/feed.py) as ONE statement: one round trip, and
-- one snapshot for every part of it (in READ COMMITTED a statement runs on a
-- single snapshot, which pg_current_snapshot() reports). Rows come back
-- tagged by kind (xids as bigint: an xid8 is epoch << 32 | xid):
--   's'  the snapshot, 'xmin:xmax:xip,...' (in the event_type column);
--   'l'  late rows: at or below the cursor, written by transactions the
--        previous read saw as in progress (pending xids, or xid >= its xmax:
--        xmax is latestCompletedXid + 1, so a running transaction can already
--        hold an xid at or above it) that have committed since, above the
--        cursor's position in each (pending_done, 0 = none): paged by id,
--        at most "limit" of them;
--   'm'  transactions of a full late page with rows past it: the reader cuts
--        the late page as it cuts the page;
--   'p'  the page: visible rows above the cursor, by id (primary-key scan);
--        none when the late rows fill their page, so a read returns at most
--        "limit" late rows and "limit" page rows;
--   'c'  transactions of a full page, or late ones, with rows past the page:
--        the reader cuts the page so that each transaction comes out whole.
-- The xid lookups use events_xid_id_idx (sql/002): both conditions are index
-- conditions, and "rows past the page" is one probe per transaction however
-- large the transaction.
--
-- The late rows of transactions at/above the cursor's xmax (issue 22): the
-- only ones that can have visible rows are below this snapshot's xmax, so
-- the statement walks the xids [cursor xmax, snapshot xmax) and probes the
-- (xid, id) index once for each (a LATERAL with LIMIT: always a
-- parameterised index scan, whatever the statistics say). Written as one
-- range condition "xid >= xmax", the planner chose a sequential scan of the
-- whole table whenever the statistics were missing or stale (a growing
-- table: every read O(table)), and at best it scanned every row written
-- since the previous read, the unread page included. The walk costs one
-- probe per xid consumed since the previous read; past "walk_max" xids (a
-- cursor far behind; relay/feed.py RANGE_WALK_MAX) the range scan is
-- cheaper and is used instead.
--
-- Every per-xid probe is written as a range of (xid, id) row comparisons,
-- ordered by (xid, id): only events_xid_id_idx can serve that, as one
-- bounded, ordered index range (ids start at 1, so 0 is below them all,
-- as pend.done = 0 already is). Written as "x.xid = ... ORDER BY x.id", a
-- generic plan (the statement is prepared; after five runs PostgreSQL may
-- cache one) could pick the primary key in id order with the xid as a
-- filter, expecting a match soon from the statistics of a bulk-loaded table
-- (few transactions of many rows): for an xid with no rows at or below the
-- cursor that scans every row below it, once per xid walked, and a reader
-- behind by a few thousand transactions took seconds per read (B6;
-- tests/db/test_feed_plan.py).
WITH snap AS MATERIALIZED (
    SELECT s::text AS s, pg_snapshot_xmax(s)::text::bigint AS xmax
    FROM pg_current_snapshot() AS s
), pend AS (
    SELECT p.xid, p.done
    FROM unnest(%(pending)s::text[]::xid8[], %(pending_done)s::bigint[]) AS p(xid, done)
), late AS MATERIALIZED (
    SELECT *
    FROM ((SELECT e.id, e.xid, e.event_type, e.payload, e.created_at, e.key,
                  e.traceparent, e.tracestate
           FROM pend, LATERAL (
               SELECT * FROM outbox.events x
               WHERE (x.xid, x.id) > (pend.xid, pend.done)
                 AND (x.xid, x.id) <= (pend.xid, %(after)s::bigint)
               ORDER BY x.xid, x.id
               LIMIT %(limit)s) AS e)
          UNION ALL
          (SELECT e.id, e.xid, e.event_type, e.payload, e.created_at, e.key,
                  e.traceparent, e.tracestate
           FROM snap, generate_series(%(xmax)s::text::bigint, snap.xmax - 1) AS w(x),
                LATERAL (
               SELECT * FROM outbox.events x
               WHERE (x.xid, x.id) >= (w.x::text::xid8, 0::bigint)
                 AND (x.xid, x.id) <= (w.x::text::xid8, %(after)s::bigint)
               ORDER BY x.xid, x.id
               LIMIT %(limit)s) AS e
           WHERE snap.xmax - %(xmax)s::text::bigint <= %(walk_max)s::bigint
             AND w.x <> ALL (%(pending)s::text[]::bigint[]))
          UNION ALL
          (SELECT id, xid, event_type, payload, created_at, key, traceparent, tracestate
           FROM outbox.events
           WHERE (SELECT xmax FROM snap) - %(xmax)s::text::bigint > %(walk_max)s::bigint
             AND xid >= %(xmax)s::text::xid8 AND id <= %(after)s
             AND xid <> ALL (%(pending)s::text[]::xid8[])
           ORDER BY id
           LIMIT %(limit)s)) AS l
    ORDER BY id
    LIMIT %(limit)s
), late_end AS (
    SELECT count(*) AS n, max(id) AS max_id FROM late
), late_more AS (
    SELECT t.xid
    FROM late_end, (SELECT DISTINCT xid FROM late) AS t
    WHERE late_end.n >= %(limit)s
      AND (SELECT max(e.id) FROM outbox.events e WHERE e.xid = t.xid) > late_end.max_id
), page AS MATERIALIZED (
    SELECT id, xid, event_type, payload, created_at, key, traceparent, tracestate
    FROM outbox.events
    WHERE id > %(after)s
    ORDER BY id
    LIMIT (SELECT CASE WHEN n >= %(limit)s THEN 0 ELSE %(limit)s END FROM late_end)
), page_end AS (
    SELECT count(*) AS n, max(id) AS max_id FROM page
), continuing AS (
    -- "The transaction's largest id" is one backward probe of the (xid, id)
    -- index whatever the statistics say; an EXISTS (... id > page end) may be
    -- planned as a join or a scan over every row past the page.
    SELECT t.xid
    FROM page_end, (SELECT xid FROM page UNION SELECT xid FROM late) AS t
    WHERE page_end.n >= %(limit)s
      AND (SELECT max(e.id) FROM outbox.events e WHERE e.xid = t.xid) > page_end.max_id
)
SELECT 's' AS kind, NULL::bigint AS id, NULL::bigint AS xid, s AS event_type,
       NULL::text AS payload, NULL::timestamptz AS created_at,
       NULL::text AS key, NULL::text AS traceparent, NULL::text AS tracestate
FROM snap
UNION ALL
SELECT 'p', id, xid::text::bigint, event_type, payload::text, created_at,
       key, traceparent, tracestate FROM page
UNION ALL
SELECT 'l', id, xid::text::bigint, event_type, payload::text, created_at,
       key, traceparent, tracestate FROM late
UNION ALL
SELECT 'm', NULL, xid::text::bigint, NULL, NULL, NULL, NULL, NULL, NULL FROM late_more
UNION ALL
SELECT 'c', NULL, xid::text::bigint, NULL, NULL, NULL, NULL, NULL, NULL FROM continuing;

-- name: feed_head
-- The cursor of "now": the largest visible id, and the snapshot's view of
-- what is still in progress (any such transaction may own an id below it).
SELECT pg_current_snapshot()::text AS snapshot,
       coalesce((SELECT max(id) FROM outbox.events), 0) AS max_id;

-- name: feed_lag
-- What this cursor has not read yet: visible rows above it (counted up to a
-- cap, so a huge backlog costs a bounded index scan) plus late rows of the
-- transactions it waits for; and the age of the oldest of them.
WITH unread AS (
    (SELECT id, created_at FROM outbox.events
     WHERE id > %(after)s
     ORDER BY id
     LIMIT %(cap)s)
    UNION ALL
    SELECT id, created_at FROM outbox.events
    WHERE (xid = ANY (%(pending)s::text[]::xid8[]) OR xid >= %(xmax)s::text::xid8)
      AND id <= %(after)s
)
SELECT count(*) AS events,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM unread;
