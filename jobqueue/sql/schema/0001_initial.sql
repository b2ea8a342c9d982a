-- jobqueue schema, revision 0001.
-- The schema placeholder is replaced by the quoted schema identifier
-- (psycopg.sql.Identifier); literal braces are therefore written doubled.

CREATE SCHEMA IF NOT EXISTS {schema};

-- The hot table. A row lives here only while its job is queued (possibly
-- scheduled for later) or running: success deletes it and permanent failure
-- moves it to dead_jobs, so the claim query scans a table that stays small.
CREATE TABLE {schema}.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text        NOT NULL DEFAULT 'default',
    task          text        NOT NULL,
    args          jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    priority      smallint    NOT NULL DEFAULT 0,
    state         text        NOT NULL DEFAULT 'queued'
                  CONSTRAINT jobs_state_check CHECK (state IN ('queued', 'running')),
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 5
                  CONSTRAINT jobs_max_attempts_check CHECK (max_attempts >= 1),
    unique_key    text,
    cron_name     text,
    errors        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    locked_by     text,
    locked_until  timestamptz,
    replay_of     bigint,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Serves the claim: "ready rows of these queues in priority order". Partial,
-- so running rows (and the dead tuples that claims and acks leave behind until
-- vacuum) are not in the index the claim walks.
CREATE INDEX jobs_ready_idx ON {schema}.jobs (queue, priority, run_at, id)
    WHERE state = 'queued';

-- Serves heartbeats, shutdown release and crash rescue: "rows held by worker X".
CREATE INDEX jobs_locked_by_idx ON {schema}.jobs (locked_by)
    WHERE state = 'running';

-- Every row in jobs is live, so a plain partial unique index gives
-- "a key exists at most once among queued and running jobs".
CREATE UNIQUE INDEX jobs_unique_key_idx ON {schema}.jobs (unique_key)
    WHERE unique_key IS NOT NULL;

-- Every job is inserted, updated at least once (claim) and deleted: the table
-- produces dead tuples at the rate of the queue's throughput while its live size
-- stays small. The default trigger (20 percent of the table's size) would wait for far
-- too long on a table that is often nearly empty, and the default cost delay
-- throttles the vacuum that does run. Vacuum after a fixed number of dead rows
-- instead, at full speed, so the claim never walks a graveyard.
ALTER TABLE {schema}.jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- Jobs that cannot succeed. Never purged automatically: an operator lists,
-- inspects, replays or purges them. A replay inserts a new job and records
-- when and as which job id, so the audit trail survives.
CREATE TABLE {schema}.dead_jobs (
    id            bigint      PRIMARY KEY,
    queue         text        NOT NULL,
    task          text        NOT NULL,
    args          jsonb       NOT NULL,
    priority      smallint    NOT NULL,
    run_at        timestamptz NOT NULL,
    attempts      integer     NOT NULL,
    max_attempts  integer     NOT NULL,
    unique_key    text,
    cron_name     text,
    errors        jsonb       NOT NULL,
    replay_of     bigint,
    created_at    timestamptz NOT NULL,
    died_at       timestamptz NOT NULL DEFAULT now(),
    reason        text        NOT NULL,
    replay_count  integer     NOT NULL DEFAULT 0,
    replayed_at   timestamptz,
    replayed_as   bigint
);

CREATE INDEX dead_jobs_died_at_idx ON {schema}.dead_jobs (died_at);
CREATE INDEX dead_jobs_task_idx ON {schema}.dead_jobs (task, died_at);
CREATE INDEX dead_jobs_queue_idx ON {schema}.dead_jobs (queue, died_at);

-- One row per live worker. backend_pid/backend_start identify the worker's
-- LISTEN session, so the maintenance leader can see that a worker's session is
-- gone (pg_stat_activity) before its heartbeat expires.
CREATE TABLE {schema}.workers (
    id             text        PRIMARY KEY,
    hostname       text        NOT NULL,
    pid            integer     NOT NULL,
    queues         text[]      NOT NULL,
    concurrency    integer     NOT NULL,
    backend_pid    integer,
    backend_start  timestamptz,
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per periodic schedule: schedules and their last fire time survive
-- restarts, and the tick already fired is recorded once.
CREATE TABLE {schema}.cron (
    name          text        PRIMARY KEY,
    expression    text        NOT NULL,
    task          text        NOT NULL,
    args          jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    queue         text        NOT NULL DEFAULT 'default',
    timezone      text        NOT NULL DEFAULT 'UTC',
    overlap       text        NOT NULL DEFAULT 'skip',
    last_fire_at  timestamptz,
    next_fire_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
