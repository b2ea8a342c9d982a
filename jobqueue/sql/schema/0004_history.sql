-- jobqueue schema, revision 0004: history, results, progress.
-- The schema placeholder is replaced by the quoted schema identifier
-- (psycopg.sql.Identifier); literal braces are therefore written doubled.

-- started_at: when the current attempt was claimed (JobInfo, history).
-- progress: the running attempt's last ctx.progress() (throttled by the worker).
-- awaited: somebody waits for this job's outcome (app.result): the statements
-- that finish it NOTIFY only then, so a queue nobody waits on pays no NOTIFY
-- (every notifying commit takes one database-wide lock in Postgres).
ALTER TABLE {schema}.jobs
    ADD COLUMN started_at timestamptz,
    ADD COLUMN progress jsonb,
    ADD COLUMN awaited boolean NOT NULL DEFAULT false;

ALTER TABLE {schema}.dead_jobs
    ADD COLUMN started_at timestamptz,
    ADD COLUMN progress jsonb;

-- One row per succeeded job, written by the statement that deletes it from
-- jobs, so a job is always live, dead or in history (and never two of them).
--
-- Partitioned by day of finished_at, and pruned by dropping whole partitions:
-- a DELETE of expired rows would leave every deleted row behind as a dead tuple
-- for vacuum to find, bloat the table and its indexes between vacuums, and cost
-- a write per row; dropping a day's partition is one catalog change and gives
-- the disk back at once. expires_at is per row (retention is per task), so a
-- day's partition goes once its last row has expired (see maintain_history),
-- and readers hide rows already past expires_at meanwhile.
CREATE TABLE {schema}.job_history (
    id              bigint      NOT NULL,
    queue           text        NOT NULL,
    task            text        NOT NULL,
    args            jsonb       NOT NULL,
    result          jsonb,
    attempts        integer     NOT NULL,
    max_attempts    integer,
    priority        smallint    NOT NULL,
    errors          jsonb       NOT NULL,
    progress        jsonb,
    correlation_id  text,
    replay_of       bigint,
    cron_name       text,
    worker          text,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL
) PARTITION BY RANGE (finished_at);

-- app.job(id) and app.result(id).
CREATE INDEX job_history_id_idx ON {schema}.job_history (id);
-- history list, newest first, optionally of one task.
CREATE INDEX job_history_finished_idx ON {schema}.job_history (finished_at);
CREATE INDEX job_history_task_idx ON {schema}.job_history (task, finished_at);

-- Catches a row whose day has no partition (the leader had not run for days):
-- an ack must never fail for want of one. Pruned by DELETE (it stays small).
CREATE TABLE {schema}.job_history_default PARTITION OF {schema}.job_history DEFAULT;

-- The daily partitions maintain_history made, and once a day is over, when
-- the last of its rows expires.
CREATE TABLE {schema}.history_partitions (
    day         date        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    drop_after  timestamptz
);

-- Partitions are created ahead and dropped by the maintenance leader, which
-- runs as the worker's role: a least-privilege worker may not create or drop
-- tables, so this function does it with the rights of the role that migrated
-- (SECURITY DEFINER), and does nothing else. Days are UTC days. Returns the
-- number of partitions dropped.
CREATE FUNCTION {schema}.maintain_history(p_now timestamptz DEFAULT now(),
                                          p_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
-- A SECURITY DEFINER function must not resolve names through the caller's
-- search_path; every name below is schema-qualified.
SET search_path = pg_catalog, pg_temp
-- DDL on a partition locks the parent: never queue the fleet's acks behind a
-- long reader for long. A partition that cannot be locked waits for the next round.
SET lock_timeout = '2s'
AS $$
DECLARE
    d date;
    part record;
    last_expiry timestamptz;
    dropped integer := 0;
    today date := (p_now AT TIME ZONE 'UTC')::date;
BEGIN
    FOR i IN 0..p_ahead LOOP
        d := today + i;
        CONTINUE WHEN EXISTS (SELECT 1 FROM {schema}.history_partitions WHERE day = d);
        BEGIN
            -- Built with quote_ident/quote_literal rather than format(): a percent
            -- sign would be doubled by `jobqueue migrate --sql`.
            EXECUTE 'CREATE TABLE {schema}.' || quote_ident('job_history_' || to_char(d, 'YYYYMMDD'))
                    || ' PARTITION OF {schema}.job_history FOR VALUES FROM ('
                    || quote_literal(d::timestamp AT TIME ZONE 'UTC') || ') TO ('
                    || quote_literal((d + 1)::timestamp AT TIME ZONE 'UTC') || ')';
            INSERT INTO {schema}.history_partitions (day, name)
            VALUES (d, 'job_history_' || to_char(d, 'YYYYMMDD'));
        EXCEPTION
            -- check_violation: the default partition already holds rows of that day;
            -- they stay there (and are pruned there).
            WHEN lock_not_available OR check_violation OR duplicate_table THEN NULL;
        END;
    END LOOP;
    -- A day over (with a margin for acks still committing) gets its drop time
    -- once: nothing is written into it any more.
    FOR part IN SELECT day, name FROM {schema}.history_partitions
                WHERE drop_after IS NULL
                  AND (day + 1)::timestamp AT TIME ZONE 'UTC' < p_now - interval '10 minutes'
    LOOP
        EXECUTE 'SELECT max(expires_at) FROM {schema}.' || quote_ident(part.name) INTO last_expiry;
        UPDATE {schema}.history_partitions SET drop_after = coalesce(last_expiry, p_now)
        WHERE day = part.day;
    END LOOP;
    FOR part IN SELECT day, name FROM {schema}.history_partitions
                WHERE drop_after <= p_now ORDER BY day
    LOOP
        BEGIN
            EXECUTE 'DROP TABLE {schema}.' || quote_ident(part.name);
            DELETE FROM {schema}.history_partitions WHERE day = part.day;
            dropped := dropped + 1;
        EXCEPTION WHEN lock_not_available THEN NULL;
        END;
    END LOOP;
    DELETE FROM {schema}.job_history_default WHERE expires_at <= p_now;
    RETURN dropped;
END
$$;

REVOKE ALL ON FUNCTION {schema}.maintain_history(timestamptz, integer) FROM PUBLIC;

SELECT {schema}.maintain_history();
