-- Reverts 0003_worker_defaults: jobs nobody claimed yet get the old default.
UPDATE {schema}.jobs SET max_attempts = 5 WHERE max_attempts IS NULL;
UPDATE {schema}.dead_jobs SET max_attempts = greatest(attempts, 1) WHERE max_attempts IS NULL;
ALTER TABLE {schema}.jobs ALTER COLUMN max_attempts SET DEFAULT 5,
                          ALTER COLUMN max_attempts SET NOT NULL;
ALTER TABLE {schema}.dead_jobs ALTER COLUMN max_attempts SET NOT NULL;
