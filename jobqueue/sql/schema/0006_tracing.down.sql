-- Reverts 0006_tracing.
ALTER TABLE {schema}.jobs DROP COLUMN trace_context;
ALTER TABLE {schema}.dead_jobs DROP COLUMN trace_context;
