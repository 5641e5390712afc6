-- API tokens (outbox/tokens.py). Only the SHA-256 of a token is stored.

-- name: token_insert
-- A live name is unique (api_tokens_live_name_key, a partial unique index,
-- which create_token branches on): a revoked token's name can be reused.
INSERT INTO outbox.api_tokens (name, token_hash, scope, event_types)
VALUES (%(name)s, %(hash)s, %(scope)s, %(events)s)

-- name: token_list
SELECT id, name, created_at, last_used_at, revoked_at, scope, event_types
FROM outbox.api_tokens ORDER BY id

-- name: token_revoke
UPDATE outbox.api_tokens SET revoked_at = now()
WHERE name = %(name)s AND revoked_at IS NULL

-- name: token_verify
-- The caller compares token_hash again in constant time: the index lookup
-- by digest is not.
SELECT id, name, token_hash, scope, event_types FROM outbox.api_tokens
WHERE token_hash = %(hash)s AND revoked_at IS NULL

-- name: token_is_live
SELECT 1 FROM outbox.api_tokens WHERE id = %(id)s AND revoked_at IS NULL
