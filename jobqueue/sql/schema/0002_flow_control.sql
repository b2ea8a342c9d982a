-- jobqueue schema, revision 0002: flow control, cron bookkeeping and counters.
-- The schema placeholder is replaced by the quoted schema identifier
-- (psycopg.sql.Identifier); literal braces are therefore written doubled.

-- lock_key: jobs sharing a key never run at the same time (fleet-wide).
-- cancel_requested: a running job asked to stop (jobqueue cancel).
-- correlation_id: the producer's id (a request id) that the job's logs carry.
ALTER TABLE {schema}.jobs
    ADD COLUMN lock_key text,
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN correlation_id text;

ALTER TABLE {schema}.dead_jobs
    ADD COLUMN lock_key text,
    ADD COLUMN correlation_id text;

-- Serves the anti-starvation claim ("oldest ready first, whatever the
-- priority"), which every few claims lets low-priority work through.
CREATE INDEX jobs_oldest_idx ON {schema}.jobs (queue, run_at, id)
    WHERE state = 'queued';

-- Serves overlap protection: "is a run of this schedule queued or running?"
CREATE INDEX jobs_cron_name_idx ON {schema}.jobs (cron_name)
    WHERE cron_name IS NOT NULL;

-- One row per lock key held by a running job. Claims insert here with
-- ON CONFLICT DO NOTHING, which Postgres resolves correctly between concurrent
-- transactions (the loser waits for the winner's commit, then skips): a
-- snapshot-based "is another job with this key running?" check could not,
-- because two claimers with older snapshots would both see "no".
CREATE TABLE {schema}.job_locks (
    lock_key  text   PRIMARY KEY,
    job_id    bigint NOT NULL
);
CREATE INDEX job_locks_job_id_idx ON {schema}.job_locks (job_id);

-- Per-queue controls, shared by the whole fleet. A queue without a row is
-- running, unlimited.
CREATE TABLE {schema}.queues (
    name         text        PRIMARY KEY,
    paused       boolean     NOT NULL DEFAULT false,
    max_running  integer     CONSTRAINT queues_max_running_check CHECK (max_running > 0),
    rate_limit   integer     CONSTRAINT queues_rate_limit_check CHECK (rate_limit > 0),
    rate_period  double precision
                 CONSTRAINT queues_rate_period_check CHECK (rate_period > 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_rate_check CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

-- Fixed-window counters of claims for rate-limited queues.
CREATE TABLE {schema}.queue_windows (
    queue         text        NOT NULL,
    window_start  timestamptz NOT NULL,
    claimed       integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, window_start)
);

-- Outcome counters in 10-second buckets (jobs/s over the last minute for
-- `stats` and metrics) without keeping a row per finished job.
CREATE TABLE {schema}.job_counts (
    queue      text        NOT NULL,
    bucket     timestamptz NOT NULL,
    succeeded  bigint      NOT NULL DEFAULT 0,
    retried    bigint      NOT NULL DEFAULT 0,
    dead       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, bucket)
);

ALTER TABLE {schema}.cron
    ADD COLUMN priority smallint NOT NULL DEFAULT 0,
    ADD COLUMN catch_up integer NOT NULL DEFAULT 1
        CONSTRAINT cron_catch_up_check CHECK (catch_up >= 0);
