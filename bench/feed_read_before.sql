-- The feed statement as it was before issue 22 item 4 (commit 8457899), kept
-- so that bench/feed_profile.py can measure before and after interleaved.
-- Not used by the product.

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
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot()::text AS s
), pend AS (
    SELECT p.xid, p.done
    FROM unnest(%(pending)s::text[]::xid8[], %(pending_done)s::bigint[]) AS p(xid, done)
), late AS MATERIALIZED (
    SELECT *
    FROM ((SELECT e.id, e.xid, e.event_type, e.payload, e.created_at, e.key,
                  e.traceparent, e.tracestate
           FROM pend, LATERAL (
               SELECT * FROM outbox.events x
               WHERE x.xid = pend.xid AND x.id > pend.done AND x.id <= %(after)s
               ORDER BY x.id
               LIMIT %(limit)s) AS e)
          UNION ALL
          (SELECT id, xid, event_type, payload, created_at, key, traceparent, tracestate
           FROM outbox.events
           WHERE xid >= %(xmax)s::text::xid8 AND id <= %(after)s
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
