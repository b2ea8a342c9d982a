-- jobqueue schema, revision 0006: the producer's trace context, kept with the job.
-- The schema placeholder is replaced by the quoted schema identifier.

-- What OpenTelemetry's propagator wrote at enqueue (W3C traceparent, and
-- tracestate or baggage if configured), so the worker's span of an attempt
-- can name the producer's span as its parent or link to it. NULL when the
-- producer had no tracing: a nullable column with no default is added without
-- rewriting the table, and costs a job nothing when unused.
ALTER TABLE {schema}.jobs ADD COLUMN trace_context jsonb;
-- A dead job keeps it, so that its replay links to the trace that made it.
ALTER TABLE {schema}.dead_jobs ADD COLUMN trace_context jsonb;
