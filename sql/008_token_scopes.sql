-- 008: scoped API tokens (CONTRACT.md "Tokens with scopes").
--
-- admin: everything; read: every GET, /ws and /events; feed: only /ws and
-- /events, limited to event_types when set. Tokens created before this
-- migration keep what they could do: admin. event_types belongs to feed
-- tokens only (NULL: every event type).
ALTER TABLE outbox.api_tokens
    ADD COLUMN scope text NOT NULL DEFAULT 'admin',
    ADD COLUMN event_types text[],
    ADD CONSTRAINT api_tokens_scope_check CHECK (scope IN ('admin', 'read', 'feed')),
    ADD CONSTRAINT api_tokens_event_types_feed_only
        CHECK (event_types IS NULL OR scope = 'feed');
