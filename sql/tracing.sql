-- The writer's trace context (outbox/tracing.py): stored on every event its
-- transaction writes, by outbox.publish and the capture triggers.

-- name: set_trace_context
-- set_config(..., true) is SET LOCAL: the setting ends with the transaction,
-- so a pooled connection never carries it into the next one.
SELECT set_config('outbox.traceparent', %(traceparent)s, true),
       set_config('outbox.tracestate', %(tracestate)s, true)

-- name: set_trace_context_session
-- The same for a SQLAlchemy session, in text()'s bind style (no other colon
-- may appear in the statement, comments included).
SELECT set_config('outbox.traceparent', :traceparent, true),
       set_config('outbox.tracestate', :tracestate, true)
