-- 007: per-webhook custom request headers.
--
-- A JSON object of header name -> value, sent with every attempt of the
-- webhook's deliveries (relay/webhook_headers.py says which names are
-- refused, and the API checks them before they get here). The CHECK keeps
-- the column an object, so the sender never has to guess its shape.
ALTER TABLE outbox.webhooks
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD CONSTRAINT webhooks_headers_object CHECK (jsonb_typeof(headers) = 'object');
