-- Reverts 0004_history.
DROP FUNCTION IF EXISTS {schema}.maintain_history(timestamptz, integer);
DROP TABLE IF EXISTS {schema}.history_partitions;
DROP TABLE IF EXISTS {schema}.job_history;
ALTER TABLE {schema}.dead_jobs DROP COLUMN IF EXISTS started_at,
                               DROP COLUMN IF EXISTS progress;
ALTER TABLE {schema}.jobs DROP COLUMN IF EXISTS started_at,
                          DROP COLUMN IF EXISTS progress,
                          DROP COLUMN IF EXISTS awaited;
