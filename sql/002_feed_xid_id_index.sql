-- 002: index the feed's transaction lookups by (xid, id).
--
-- The feed reader asks two questions by transaction id (relay/feed.py,
-- feed_read in sql/queries.sql): "the rows of these transactions at or below
-- the cursor" and "does this transaction have rows past the page". With an
-- index on xid alone both walk every row of the transaction and fetch it from
-- the heap to test the id: a one-million-row transaction read in pages of a
-- thousand costs a million heap fetches per page. With (xid, id) both are
-- index conditions and the second is a single probe. It replaces the xid-only
-- index, which it makes redundant.
CREATE INDEX events_xid_id_idx ON outbox.events (xid, id);
DROP INDEX outbox.events_xid_idx;
