-- Reverts 0001_initial. The schema itself stays: Alembic's version table lives in it.
DROP TABLE IF EXISTS {schema}.cron;
DROP TABLE IF EXISTS {schema}.workers;
DROP TABLE IF EXISTS {schema}.dead_jobs;
DROP TABLE IF EXISTS {schema}.jobs;
