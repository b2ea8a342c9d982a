-- Reverts 0002_flow_control.
ALTER TABLE {schema}.cron DROP COLUMN catch_up, DROP COLUMN priority;
DROP TABLE IF EXISTS {schema}.job_counts;
DROP TABLE IF EXISTS {schema}.queue_windows;
DROP TABLE IF EXISTS {schema}.queues;
DROP TABLE IF EXISTS {schema}.job_locks;
DROP INDEX IF EXISTS {schema}.jobs_cron_name_idx;
DROP INDEX IF EXISTS {schema}.jobs_oldest_idx;
ALTER TABLE {schema}.dead_jobs DROP COLUMN correlation_id, DROP COLUMN lock_key;
ALTER TABLE {schema}.jobs
    DROP COLUMN correlation_id, DROP COLUMN cancel_requested, DROP COLUMN lock_key;
