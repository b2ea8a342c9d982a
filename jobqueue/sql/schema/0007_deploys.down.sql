-- Reverts 0007_deploys.
DROP FUNCTION {schema}.ready_capped(text, integer);
ALTER TABLE {schema}.queues DROP COLUMN max_ready, DROP COLUMN reject_when_full;
ALTER TABLE {schema}.job_history DROP COLUMN version;
ALTER TABLE {schema}.dead_jobs DROP COLUMN version;
ALTER TABLE {schema}.jobs DROP COLUMN version;
