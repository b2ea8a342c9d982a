-- Reverts 0005_workflows.
DROP TABLE IF EXISTS {schema}.job_deps;
DROP TABLE IF EXISTS {schema}.workflows;
ALTER TABLE {schema}.job_history DROP COLUMN IF EXISTS workflow_id;
ALTER TABLE {schema}.dead_jobs DROP COLUMN IF EXISTS workflow_id;
DELETE FROM {schema}.jobs WHERE state = 'waiting';
ALTER TABLE {schema}.jobs DROP COLUMN IF EXISTS workflow_id, DROP COLUMN IF EXISTS waiting;
ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_state_check CHECK (state IN ('queued', 'running'));
